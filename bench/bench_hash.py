"""Benchmark of the data pin: hashing a 5,000-file / ~1 GB tree, cold cache vs. warm cache.

Usage:
    python bench/bench_hash.py [DIR] [--repeat 5] [--files 5000] [--bytes 1024000000] [--check]

DIR (default: ``<repo>/.bench``, git-ignored) receives ``hash-tree/`` (created once with random
data and reused while its manifest matches) and a throw-away hash cache. The tree's shape copies
the one DVC 3.67 was timed on (environment.md): 5,000 files, 977 MiB, 50 directories.

Measured side by side, rounds interleaved (a b c d e, a b c d e, ...) so that load from other
users of the machine hits every variant alike; each figure is the median of `--repeat` rounds:

  (a) first hash: `verify_data` with an empty hash cache (db deleted), all cores. The page cache
      still holds the files, so this is hashing speed, not disk speed;
  (b) re-verify of the unchanged tree: `verify_data` with the warm cache, in-process (includes
      opening the cache db);
  (c) reference: single-threaded `hash_path(..., cache=False, workers=1)`, page cache warm;
  (d) first hash with the files evicted from the page cache first (``drop_caches`` when
      permitted, else ``posix_fadvise(DONTNEED)`` per file; on a VM the host may still cache);
  (e) re-verify in a fresh ``python -c`` process (interpreter start + import included), the
      fair comparison with a no-op ``dvc status`` (~1 s on this machine kind);
  (f) the ceiling: sha256 of 1 GB already in memory, one thread per worker, no I/O. The machine
      is shared, so (f) shows how much CPU was actually available in the same rounds.

``--check`` exits 1 when (a) < 1.0 GB/s or (b) > 0.3 s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from repro.pins.data import default_workers, hash_path, verify_data  # noqa: E402
from repro.pins.hashcache import HashCache  # noqa: E402

N_DIRS = 50
SEED = 20240601


def make_tree(base: Path, n_files: int, total: int) -> Path:
    """The benchmark tree, reused when its manifest matches (creating it takes ~10 s)."""
    import numpy as np

    tree, manifest = base / "hash-tree", base / "hash-tree.json"
    want = {"files": n_files, "bytes": total, "dirs": N_DIRS, "seed": SEED}
    if manifest.exists() and json.loads(manifest.read_text()) == want and tree.is_dir():
        return tree
    print(f"creating {tree} ({n_files} files, {total / 1e9:.3f} GB) ...", flush=True)
    shutil.rmtree(tree, ignore_errors=True)
    manifest.unlink(missing_ok=True)
    rng = np.random.default_rng(SEED)
    mean = total // n_files
    sizes = rng.integers(mean // 2, mean + mean // 2, n_files)
    sizes = (sizes * (total / sizes.sum())).astype(np.int64)
    sizes[-1] += total - int(sizes.sum())  # exact total (a rounding remainder only)
    for i, size in enumerate(sizes):
        d = tree / f"d{i % N_DIRS:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(rng.bytes(int(size)))
    manifest.write_text(json.dumps(want))
    return tree


def evict(tree: Path) -> str:
    """Drop the tree's pages from the page cache; say how."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        pass
    for dirpath, _, names in os.walk(tree):
        for n in names:
            fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return "posix_fadvise(DONTNEED)"


def machine_busy_s() -> float:
    """CPU seconds all processes have spent busy since boot (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", default=str(REPO / ".bench"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--bytes", type=int, default=1_024_000_000)
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args()

    base = Path(args.dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    tree = make_tree(base, args.files, args.bytes)
    newest = max(p.stat().st_mtime for p in tree.rglob("*.bin"))
    if time.time() - newest < 2.5:  # files this fresh are "racy": the cache would not keep them
        time.sleep(2.5 - (time.time() - newest))
    nbytes = sum(p.stat().st_size for p in tree.rglob("*.bin"))
    nfiles = sum(1 for _ in tree.rglob("*.bin"))
    db = base / "bench-cache" / "hashes.sqlite"
    rel = tree.name

    def drop_db() -> None:
        shutil.rmtree(db.parent, ignore_errors=True)

    drop_db()
    expected = hash_path(tree, False)
    entries = {"tree": (rel, expected)}

    def first() -> None:
        drop_db()
        with HashCache(db) as c:
            verify_data(entries, base, c)

    def warm() -> None:
        with HashCache(db) as c:
            verify_data(entries, base, c)

    def single() -> None:
        assert hash_path(tree, False, workers=1) == expected

    eviction = ["?"]

    def cold() -> float:
        drop_db()
        eviction[0] = evict(tree)
        t = time.perf_counter()
        with HashCache(db) as c:
            verify_data(entries, base, c)
        return time.perf_counter() - t

    child = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
             "from repro.pins.data import verify_data\nfrom repro.pins.hashcache import HashCache\n"
             f"verify_data({entries!r}, {str(base)!r}, HashCache({str(db)!r}))")

    def fresh_process() -> None:
        subprocess.run([sys.executable, "-c", child], check=True)

    busy: dict[str, list[float]] = {k: [] for k in "abcdf"}  # CPU seconds / wall: cores used

    blob = bytes(nbytes // default_workers())

    def ceiling() -> None:
        ts = [threading.Thread(target=hashlib.sha256, args=(blob,))
              for _ in range(default_workers())]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    others: dict[str, list[float]] = {k: [] for k in "abcdf"}  # other processes' cores

    def timed(key, fn) -> float:
        m, t, c = machine_busy_s(), time.perf_counter(), time.process_time()
        out = fn()
        wall = out if isinstance(out, float) else time.perf_counter() - t
        mine, total = time.process_time() - c, machine_busy_s() - m
        if key in busy:
            busy[key].append(mine / max(wall, 1e-9))
            others[key].append(max(0.0, total - mine) / max(time.perf_counter() - t, 1e-9))
        return wall

    runs: dict[str, list[float]] = {k: [] for k in "abcdef"}
    load0 = os.getloadavg()
    first()  # warm the page cache and imports once, untimed
    for r in range(args.repeat):
        runs["a"].append(timed("a", first))
        warm()  # ensure (b) sees a cache filled by (a)
        runs["b"].append(timed("b", warm))
        runs["c"].append(timed("c", single))
        runs["d"].append(timed("d", cold))
        warm()
        runs["e"].append(timed("e", fresh_process))
        runs["f"].append(timed("f", ceiling))
        print(f"round {r + 1}/{args.repeat}: " +
              "  ".join(f"{k}={v[-1]:.3f}s" for k, v in runs.items()), flush=True)
    load1 = os.getloadavg()

    med = {k: statistics.median(v) for k, v in runs.items()}
    gbs = {k: nbytes / 1e9 / med[k] for k in med}
    labels = {
        "a": "first hash, empty cache, page cache warm",
        "b": "re-verify unchanged tree, warm cache (in-process)",
        "c": "reference: single-threaded, no cache, page cache warm",
        "d": f"first hash, empty cache, page cache evicted ({eviction[0]})",
        "e": "re-verify, warm cache, fresh python process",
        "f": "ceiling: in-memory sha256, one thread per worker",
    }
    print(f"\ntree: {tree}  {nfiles} files  {nbytes / 1e9:.3f} GB ({nbytes / 2**20:.0f} MiB)")
    print(f"workers: {default_workers()}  cpu_count: {os.cpu_count()}  "
          f"python {sys.version.split()[0]}  loadavg before {load0[0]:.2f} after {load1[0]:.2f}"
          " (other users of the machine compete for the same cores)")
    print(f"median of {args.repeat}; cores = our CPU seconds / wall seconds; others = cores "
          "busy with other processes meanwhile (/proc/stat, 10 ms ticks); (min..max):")
    for k in runs:
        speed = f"{gbs[k]:6.2f} GB/s" if k in "acdf" else " " * 11
        cores = (f"{statistics.median(busy[k]):4.2f} cores, others "
                 f"{statistics.median(others[k]):4.2f}") if k in busy else " " * 24
        print(f"  ({k}) {labels[k]:<58} {med[k]:8.3f} s  {speed}  {cores}  "
              f"({min(runs[k]):.3f}..{max(runs[k]):.3f})")
    print("ratios:")
    print(f"  parallel / single-threaded first hash: {med['c'] / med['a']:.2f}x;"
          f" first hash / ceiling: {med['f'] / med['a']:.0%}")
    print(f"  first hash / re-verify (cache benefit): {med['a'] / med['b']:.0f}x")
    print(f"  DVC 3.67 no-op `dvc status` ~1 s / re-verify in-process: {1.0 / med['b']:.0f}x;"
          f" / fresh process: {1.0 / med['e']:.1f}x")
    ok_a, ok_b = gbs["a"] >= 1.0, med["b"] <= 0.3
    print(f"targets: first hash >= 1.0 GB/s: {'PASS' if ok_a else 'FAIL'} ({gbs['a']:.2f});"
          f" re-verify <= 0.3 s: {'PASS' if ok_b else 'FAIL'} ({med['b']:.3f} s)")
    drop_db()
    return 0 if (ok_a and ok_b) or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
