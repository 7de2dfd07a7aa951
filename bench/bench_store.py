"""Benchmark of the blob store's remote (docs/store.md), run by hand:

    python bench/bench_store.py [--push-mb 256] [--verify-mb 1024] [--blob-mb 4] [-j 8]

(a) push of ~256 MB of blobs (4 MB each) to moto's S3 server on 127.0.0.1 (its own process)
    through s3fs, `blobsync.push` with -j transfers at a time;
(b) pull of the same blobs into an empty machine store (each re-hashed before its rename);
    and the server's ceiling: the same number of bytes put and got through s3fs alone;
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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(store, total_mb: int, blob_mb: int) -> list[str]:
    shas = []
    for _ in range(max(1, total_mb // blob_mb)):
        shas.append(store.put(os.urandom(blob_mb << 20)))
    return shas


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--push-mb", type=int, default=256)
    ap.add_argument("--verify-mb", type=int, default=1024)
    ap.add_argument("--blob-mb", type=int, default=4)
    ap.add_argument("-j", "--jobs", type=int, default=8)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import s3fs

        from repro.blobsync import BlobRef, Project, pull, push, verify
        from repro.remote import RemoteConfig
        from repro.store import machine_store

        s3fs.S3FileSystem().mkdir("bench")
        os.environ["REPRO_CACHE_DIR"] = str(tmp / "push-cache")
        store = machine_store()
        shas = fill(store, args.push_mb, args.blob_mb)
        refs = [BlobRef(s, store.path(s).stat().st_size, "store", tmp, f"b{i}")
                for i, s in enumerate(shas)]
        proj = Project(RemoteConfig("s3://bench/store"), refs, tmp)
        t = push(proj, jobs=args.jobs)
        assert t.exit_code == 0 and t.done == len(shas), t.summary()
        print(f"(a) push  {t.rate()}  [{len(shas)} blobs of {args.blob_mb} MB, -j {args.jobs}]")
        os.environ["REPRO_CACHE_DIR"] = str(tmp / "pull-cache")
        t = pull(proj, jobs=args.jobs)
        assert t.exit_code == 0 and t.done == len(shas), t.summary()
        print(f"(b) pull  {t.rate()}  [re-hashed before rename]")
        # the server's ceiling, side by side: the same bytes through s3fs alone, same concurrency,
        # no hashing, no temp files, no repro
        from concurrent.futures import ThreadPoolExecutor
        fs = s3fs.S3FileSystem()
        blob = os.urandom(args.blob_mb << 20)
        for what, one in (("put", lambda i: fs.pipe_file(f"bench/raw/{i}", blob)),
                          ("get", lambda i: fs.cat_file(f"bench/raw/{i}"))):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(one, range(len(shas))))
            dt = time.perf_counter() - t0
            print(f"    ceiling: s3fs {what} alone, -j {args.jobs}: "
                  f"{len(shas) * len(blob) / 1e6 / dt:,.0f} MB/s")

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
        server.terminate()
        server.wait(10)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
