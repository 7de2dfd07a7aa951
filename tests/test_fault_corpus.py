"""The fault corpus, in small (issue 9 part 5; the whole corpus is `bench/bench_faults.py`).

A user's project outside zoo/ (bench/faults/workload/) in a real git repository, pinned and
recorded with the CLI; two of the corpus's faults are made as a user would make them and one clean
rerun runs under a variation, with the same machinery as the bench (bench/faults/corpus.py).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from repro.variation import Variation

_PATH = Path(__file__).resolve().parents[1] / "bench" / "faults" / "corpus.py"


def _load_corpus():
    name = "repro_fault_corpus"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module   # dataclasses resolve their module through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


corpus = _load_corpus()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    p = corpus.build_project(tmp_path_factory.mktemp("faults") / "proj")
    corpus.record(p, runs=1)
    return p


@pytest.mark.slow
def test_code_fault_caught_with_right_cause(recorded):
    """A renamed PRNG key (the fold-in name of one layer): another initialisation."""
    o = corpus.run_fault(recorded, corpus.fault("key-name"))
    assert o.status == "fail" and o.right_cause, o.as_dict()
    assert o.comparison == "bitwise"
    assert (o.first_quantity, o.first_step) == ("metric loss", 0)
    assert recorded.git("rev-parse", "HEAD") == recorded.clean   # restored


@pytest.fixture(scope="module")
def swapped_row(recorded):
    return corpus.run_fault(recorded, corpus.fault("swapped-row"))


@pytest.mark.slow
def test_data_fault_caught_and_data_pin_named(swapped_row):
    """Two rows of one shard exchanged, committed and re-pinned: caught, and the data pin is
    among the changes that may move the numbers."""
    o = swapped_row
    assert o.status == "fail", o.as_dict()
    assert "data.wdbc.sha256" in o.numeric_keys, o.as_dict()


@pytest.mark.slow
def test_data_fault_names_data_pin_first(swapped_row):
    """`repro pin` moves code.commit too (the data lives in the repository); the commit changed
    only pinned data, so it is informational and the data pin is the cause named first."""
    assert swapped_row.right_cause, swapped_row.numeric_keys
    assert swapped_row.numeric_keys[0] == "data.wdbc.sha256"


def test_clean_rerun_under_variation_passes(recorded):
    """No pin moved; another PYTHONHASHSEED and reversed directory listings: bitwise the same."""
    o = corpus.clean_rerun(recorded, Variation("hash-seed-7+reversed", hash_seed="7",
                                               listing_order="reversed"))
    assert o.status == "pass" and not o.false_alarm, o.as_dict()
    assert o.comparison == "bitwise"
