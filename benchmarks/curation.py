"""Curation throughput against a local OpenAI-compatible server with a fixed artificial latency.

    .venv/bin/python benchmarks/curation.py --latency 0.1 --concurrency 1,8,32

The teacher is a scripted chat-completions server (`tests.bench.openai_server.serve_scripted_process`: asyncio, the
latency slept asynchronously, in a process of its own, so it is not what limits the client). Difference-first editing
curation (3 teacher calls per item: report, execution, consistency; no cache, no rewriting) runs
`items_per_slot × concurrency` items at each concurrency (teacher `--concurrency`), side by side in one process,
after one untimed warm-up run (imports, first loads). One JSON line per level: items/s, the ideal
`concurrency / (3 × latency)`, the ratio to `concurrency × single-request throughput` (the measured c=1 rate; the
issue's target is >= 0.8 until the server saturates) and the client's CPU seconds per item.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CALLS_PER_ITEM = 3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--items-per-slot", type=int, default=8)
    a = ap.parse_args()

    from firm.curation.edit import EditCurationConfig, curate_edit
    from firm.curation.teachers import make_teacher
    from tests.bench.openai_server import serve_scripted_process
    from tests.curation.helpers import EditScript, write_edit_manifest

    levels = [int(x) for x in a.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest, scores, _ = write_edit_manifest(root / "in", max(levels) * a.items_per_slot)
        with serve_scripted_process(EditScript(scores), latency_s=a.latency, model_name="bench") as url:

            def run(c: int, n: int, tag: str) -> tuple[float, float]:
                cfg = EditCurationConfig(input=str(manifest), out=str(root / f"ds-{tag}"), cache="off", limit=n,
                                         work_dir=str(root / f"w-{tag}"), progress=False)  # fmt: skip
                t0, cpu0 = time.perf_counter(), time.process_time()
                res = curate_edit(cfg, make_teacher(url, model="bench", concurrency=c))
                assert res.stats["teacher"]["calls"] == CALLS_PER_ITEM * n, res.stats["teacher"]
                return time.perf_counter() - t0, time.process_time() - cpu0

            run(8, 8, "warmup")
            base = None
            for c in levels:
                n = c * a.items_per_slot
                dt, cpu = run(c, n, f"c{c}")
                rate = n / dt
                base = base or rate / c
                rows.append({"concurrency": c, "items": n, "seconds": round(dt, 2), "items_per_s": round(rate, 2),
                             "ideal_items_per_s": round(c / (CALLS_PER_ITEM * a.latency), 2),
                             "ratio_to_linear": round(rate / (c * base), 2),
                             "client_cpu_ms_per_item": round(1000 * cpu / n, 2)})  # fmt: skip
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
