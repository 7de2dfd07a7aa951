"""Benchmark of the blob store's remote (docs/store.md), run by hand:

    python bench/bench_store.py [--push-mb 256] [--verify-mb 1024] [--blob-mb 4] [-j 8]
                                [--servers rclone,moto] [--rounds 3] [--no-verify]

(a) push of ~256 MB of blobs (4 MB each) to an S3 server on 127.0.0.1 (its own process,
    tests/s3server.py: `rclone serve s3` and moto's server, side by side, in turn in each
    round, a fresh server each time) through s3fs, `store.sync.push` with -j transfers at a time;
(b) pull of the same blobs into an empty machine store (each re-hashed before its rename);
    and the server's ceiling: the same number of bytes put and got through s3fs alone;
    medians over the rounds, and each push and pull as a fraction of its server's ceiling;
(c) `store verify` of ~1 GB of blobs in the machine store (thread pool; the files are in the page
    cache, so this is hashing speed); and the ceiling: sha256 of the same bytes in memory on one
    thread, in the same run, to show what the shared machine gave.

The issue's bars: push/pull >= 200 MB/s, verify >= 1 GB/s on 2 cores. Everything lives under a
temporary directory that is removed at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.s3server import ACCESS_KEY, KINDS, SECRET_KEY, serve  # noqa: E402


def fill(store, total_mb: int, blob_mb: int) -> list[str]:
    shas = []
    for _ in range(max(1, total_mb // blob_mb)):
        shas.append(store.put(os.urandom(blob_mb << 20)))
    return shas


STEPS = ("push", "pull", "put", "get")


def transfers(kind: str, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    """Push, pull and the server's ceiling (s3fs alone) against one fresh server of `kind`:
    MB/s of each."""
    import s3fs

    from repro.store.blobs import machine_store
    from repro.store.remote import RemoteConfig
    from repro.store.sync import BlobRef, Project, pull, push

    out: dict[str, float] = {}
    with serve(kind) as server:
        os.environ.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY,
                          AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1")
        s3fs.S3FileSystem.clear_instance_cache()   # repro's remote must reach this server
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench")
        os.environ["REPRO_CACHE_DIR"] = str(tmp / "push-cache")
        store = machine_store()
        shas = sorted(store.shas()) or fill(store, args.push_mb, args.blob_mb)
        refs = [BlobRef(s, store.path(s).stat().st_size, "store", tmp, f"b{i}")
                for i, s in enumerate(shas)]
        proj = Project(RemoteConfig("s3://bench/store"), refs, tmp)
        mb = sum(r.size for r in refs) / 1e6

        def timed(what: str, work: Callable[[], Any]) -> Any:
            """Run `work`; MB/s under `what`, and the CPU it took, in ms per MB, of this process
            (the client) and of the server."""
            c0, s0, t0 = time.process_time(), server.cpu_seconds(), time.perf_counter()
            got = work()
            dt = time.perf_counter() - t0
            out[what] = mb / dt
            out[f"{what} client cpu"] = 1e3 * (time.process_time() - c0) / mb
            out[f"{what} server cpu"] = 1e3 * (server.cpu_seconds() - s0) / mb
            return got

        t = timed("push", lambda: push(proj, jobs=args.jobs))
        assert t.exit_code == 0 and t.done == len(shas), t.summary()
        pull_cache = tmp / "pull-cache"
        shutil.rmtree(pull_cache, ignore_errors=True)
        os.environ["REPRO_CACHE_DIR"] = str(pull_cache)
        t = timed("pull", lambda: pull(proj, jobs=args.jobs))
        assert t.exit_code == 0 and t.done == len(shas), t.summary()
        shutil.rmtree(pull_cache, ignore_errors=True)
        # the server's ceiling, side by side: the same bytes through s3fs alone, same
        # concurrency, no hashing, no files, no repro
        blob = os.urandom(args.blob_mb << 20)
        for what, one in (("put", lambda i: fs.pipe_file(f"bench/raw/{i}", blob)),
                          ("get", lambda i: fs.cat_file(f"bench/raw/{i}"))):
            def many(one: Callable[[int], Any] = one) -> None:
                with ThreadPoolExecutor(args.jobs) as pool:
                    list(pool.map(one, range(len(shas))))
            timed(what, many)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--push-mb", type=int, default=256)
    ap.add_argument("--verify-mb", type=int, default=1024)
    ap.add_argument("--blob-mb", type=int, default=4)
    ap.add_argument("-j", "--jobs", type=int, default=8)
    ap.add_argument("--servers", default=",".join(KINDS),
                    help=f"S3 servers to compare, in turn within each round ({','.join(KINDS)})")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--no-verify", action="store_true", help="skip (c)")
    args = ap.parse_args()
    kinds = [k for k in args.servers.split(",") if k]

    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        from repro.store.blobs import machine_store
        from repro.store.sync import verify

        runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in kinds:
                got = transfers(kind, tmp, args)
                runs[kind].append(got)
                print(f"round {r + 1} {kind:>6}: " + "  ".join(
                    f"{k} {got[k]:,.0f} MB/s (cpu ms/MB: client {got[k + ' client cpu']:.1f}, "
                    f"server {got[k + ' server cpu']:.1f})" for k in STEPS), flush=True)
        n = max(1, args.push_mb // args.blob_mb)
        print(f"medians of {args.rounds} rounds, {n} blobs of {args.blob_mb} MB "
              f"({n * (args.blob_mb << 20) / 1e6:,.0f} MB), -j {args.jobs}, MB/s:")
        print(f"  {'server':>6}  {'push':>6} {'pull':>6}   ceiling: {'put':>6} {'get':>6}   "
              "push/put pull/get")
        for kind, got in runs.items():
            m = {k: statistics.median(g[k] for g in got) for k in got[0]}
            print(f"  {kind:>6}  {m['push']:6,.0f} {m['pull']:6,.0f}            {m['put']:6,.0f} "
                  f"{m['get']:6,.0f}   {m['push'] / m['put']:8.2f} {m['pull'] / m['get']:8.2f}")
        # On a machine shared with other work wall-clock rates swing; CPU per byte does not.
        # What two otherwise idle cores would give: 2 cores / (client + server CPU per MB).
        print("  CPU per MB (medians; client = this process, all threads) and what 2 idle cores "
              "would allow:")
        for kind, got in runs.items():
            cells = []
            for k in STEPS:
                c = statistics.median(g[k + " client cpu"] for g in got)
                s = statistics.median(g[k + " server cpu"] for g in got)
                cells.append(f"{k} {c:.1f}+{s:.1f} ms -> {2e3 / (c + s):,.0f}")
            print(f"  {kind:>6}  " + "   ".join(cells) + " MB/s")
        if args.no_verify:
            return 0

        os.environ["REPRO_CACHE_DIR"] = str(tmp / "verify-cache")
        store = machine_store()
        fill(store, args.verify_mb, args.blob_mb)
        verify([], jobs=1)  # warm the page cache
        for jobs in (1, 2, 4):
            t = verify([], jobs=jobs)
            assert t.exit_code == 0, t.summary()
            print(f"(c) store verify -j {jobs}  {t.rate()}")
        data = os.urandom(256 << 20)
        t0 = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        dt = time.perf_counter() - t0
        print(f"    ceiling: sha256 in memory, one thread: {len(data) / 1e6 / dt:,.0f} MB/s; "
              f"cores: {os.cpu_count()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
