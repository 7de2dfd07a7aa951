"""Write ``data/wdbc/`` from scikit-learn's bundled breast-cancer set (run once; the files are
committed, so nothing at run time needs scikit-learn).

Where the data comes from
-------------------------
The "Breast Cancer Wisconsin (Diagnostic)" data set by W. Wolberg, O. Mangasarian, N. Street and
W. Street (University of Wisconsin, 1995), UCI Machine Learning Repository,
https://archive.ics.uci.edu/dataset/17 (doi:10.24432/C5DW2B), licensed CC BY 4.0: 569 tumours,
30 real features of the cell nuclei, malignant or benign. scikit-learn ships a copy inside its
wheel (``sklearn/datasets/data/breast_cancer.csv``, read by ``load_breast_cancer``; nothing is
downloaded). The committed files were made with scikit-learn 1.9.1 and numpy 2.4.6 from a source
file of sha256 fed3eb72d0575ef6192293f5093c6e801b1476b577d0386bf4455504522172ed.

What it writes
--------------
``data/wdbc/train-0.csv`` .. ``train-3.csv`` (455 rows in four shards of 114, 114, 114, 113, in
source order) and ``data/wdbc/test.csv`` (114 rows): every fifth tumour of the source (rows 0, 5,
10, ...) is the test set. Each file has a header line, then one tumour per line: the label
``benign`` (1 benign, 0 malignant) and the 30 features, standardised with the training rows' mean
and standard deviation (float64) and rounded to float32, written with 9 significant digits so
they read back to the same float32. The bytes depend only on the source file.

    pip install scikit-learn
    python make_data.py            # writes data/wdbc/ beside this file
    repro pin specs/cancer-mlp.yaml
"""
from __future__ import annotations

import os
import sys

import numpy as np

TEST_EVERY = 5
SHARDS = 4


def load() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    assert x.shape == (569, 30) and y.shape == (569,), (x.shape, y.shape)
    names = [str(n).replace(" ", "_") for n in bunch.feature_names]
    return x, y, names


def write_csv(path: str, x: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    lines = [",".join(["benign", *names])]
    for label, row in zip(y, x.astype(np.float32)):
        lines.append(",".join([str(int(label)), *(f"{float(v):.9g}" for v in row)]))
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    out = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "data", "wdbc")
    os.makedirs(out, exist_ok=True)
    x, y, names = load()
    test = np.arange(len(y)) % TEST_EVERY == 0
    mean, std = x[~test].mean(axis=0), x[~test].std(axis=0)
    z = (x - mean) / std
    xtr, ytr = z[~test], y[~test]
    for i, idx in enumerate(np.array_split(np.arange(len(ytr)), SHARDS)):
        write_csv(os.path.join(out, f"train-{i}.csv"), xtr[idx], ytr[idx], names)
    write_csv(os.path.join(out, "test.csv"), z[test], y[test], names)
    print(f"wrote {out}: {len(ytr)} training rows in {SHARDS} shards, {int(test.sum())} test rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
