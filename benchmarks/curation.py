"""Curation throughput against a local OpenAI-compatible server with a fixed artificial latency.

    .venv/bin/python benchmarks/curation.py --latency 0.1 --concurrency 1,8,32

A scripted chat server (tests/bench/openai_server.py, 127.0.0.1) answers every teacher request after `--latency`
seconds; difference-first editing curation (3 teacher calls per item: report, execution, consistency; no cache) runs
`items_per_slot × concurrency` items at each concurrency, side by side in one process. Prints items/s and the ratio to
`concurrency × single-request throughput` (target >= 0.8 until the server saturates).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--items-per-slot", type=int, default=4)
    a = ap.parse_args()

    from firm.curation.edit import EditCurationConfig, curate_edit
    from firm.curation.teachers import make_teacher
    from tests.bench.openai_server import serve
    from tests.curation.helpers import EditScript, write_edit_manifest

    levels = [int(x) for x in a.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest, scores, _ = write_edit_manifest(root / "in", max(levels) * a.items_per_slot)
        with serve(None, model_name="bench", script=EditScript(scores), latency_s=a.latency) as (_, url):
            base = None
            for c in levels:
                n = c * a.items_per_slot
                cfg = EditCurationConfig(input=str(manifest), out=str(root / f"ds{c}"), cache="off", limit=n,
                                         chunk_size=max(c, 8), work_dir=str(root / f"w{c}"), progress=False)  # fmt: skip
                t0 = time.perf_counter()
                curate_edit(cfg, make_teacher(url, model="bench", concurrency=c))
                dt = time.perf_counter() - t0
                rate = n / dt
                base = base or rate / c
                rows.append({"concurrency": c, "items": n, "seconds": round(dt, 2), "items_per_s": round(rate, 2),
                             "ratio_to_linear": round(rate / (c * base), 2)})  # fmt: skip
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
