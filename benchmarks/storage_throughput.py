"""20 MiB multipart upload / streaming download through FIRM's S3 store (moto over HTTP on 127.0.0.1) versus a
plain local copy (`shutil.copyfile`) and the file:// store, in one run.

    .venv/bin/python benchmarks/storage_throughput.py [--mib 20] [--repeats 5]

Prints a Markdown table (median MB/s over the repeats, ratio to the plain local copy).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from firm.processes import free_port


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        FIRM_S3_ENDPOINT=f"127.0.0.1:{port}",
        FIRM_S3_ACCESS_KEY="bench",
        FIRM_S3_SECRET_KEY="bench",
        FIRM_S3_SECURE="false",
        FIRM_S3_REGION="us-east-1",
    )
    from firm.config import get_settings
    from firm.storage import LocalStore, S3Store
    from firm.storage.s3 import PARALLEL_UPLOADS, part_size_for

    nbytes = args.mib * 1024 * 1024
    try:
        with tempfile.TemporaryDirectory(prefix="firm-bench-") as tmp:
            d = Path(tmp)
            src = d / "weights.bin"
            src.write_bytes(os.urandom(nbytes))
            s3 = S3Store.from_settings("bench", get_settings(fresh=True))
            s3.make_bucket()
            local = LocalStore(d / "store")
            out = d / "out.bin"
            ops: dict[str, Callable[[], object]] = {
                "plain local copy (shutil.copyfile)": lambda: shutil.copyfile(src, out),
                "file:// store put_file (atomic: temp + rename)": lambda: local.put_file("up.bin", src),
                "s3:// multipart upload (put_file)": lambda: s3.put_file("up.bin", src),
                "s3:// multipart upload, parts one at a time (SDK, no parallelism)": lambda: (
                    s3.client.fput_object(
                        "bench", "seq.bin", str(src), part_size=part_size_for(nbytes), num_parallel_uploads=1
                    )
                ),
                "s3:// streaming download (get_file)": lambda: s3.get_file("up.bin", out),
            }
            times: dict[str, list[float]] = {name: [] for name in ops}
            for _ in range(args.repeats):  # interleaved, so every operation sees the same machine state
                for name, op in ops.items():
                    times[name].append(_timed(op))
                    out.unlink(missing_ok=True)
            rows = {name: nbytes / 1e6 / statistics.median(t) for name, t in times.items()}
            etag = s3.stat("up.bin").etag
    finally:
        server.stop()

    base = rows["plain local copy (shutil.copyfile)"]
    print(
        f"{args.mib} MiB file, median of {args.repeats}; S3 = moto server over HTTP on 127.0.0.1 "
        f"(part size {part_size_for(nbytes) // 2**20} MiB, {PARALLEL_UPLOADS} parallel parts, ETag {etag}); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    print("| operation | MB/s | ratio vs plain local copy |")
    print("|---|---:|---:|")
    for name, mbps in rows.items():
        print(f"| {name} | {mbps:,.0f} | {mbps / base:.3f} |")


if __name__ == "__main__":
    main()
