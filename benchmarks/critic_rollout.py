"""Client errors while a critic is promoted and rolled back on the live reward service (C = 16 requests in flight).

Run (CPU; what BENCHMARKS.md reports):
    .venv/bin/python benchmarks/critic_rollout.py

A local reward service (`firm.serving.service.start_service`: the bundled tritonserver on a live repository) serves
a format-taught tiny critic; `--concurrency` asyncio workers on one `RewardClient` send one edit per request to
`firm_edit_reward` back to back, as an RL trainer does. Meanwhile `firm.launch.rollout.rollout` stages a second
export of the critic beside it, benches both on a 4-item audit set through the same endpoint, promotes it
(reloading the public models), and `rollback` returns to the first version. Every request is counted by phase
(before, during the rollout, during the rollback, after) with its outcome; the client's own retries on UNAVAILABLE
stay on (its defaults), and `server errors` counts failed inferences from Triton's own metrics
(`nv_inference_request_failure`), so a failure hidden by a client retry is still visible.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path


def _failures(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(
        float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith("nv_inference_request_failure{")
    )


def _export(critic: Path, out: Path) -> str:
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository

    cfg = ExportConfig(
        critic=str(critic), task="edit", max_new_tokens=24, max_pixels=64 * 64,
        batching=BatchingConfig(max_batch_size=16, preferred_batch_sizes=[8, 16], max_queue_delay_us=4000),
    )  # fmt: skip
    return export_repository(cfg, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds of load before and after the changes")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="firm-rollout-bench-"))
    os.environ["FIRM_HOME"] = str(work / "home")
    os.environ["FIRM_STORE_URI"] = f"file://{work}/store"
    from firm.config import get_settings

    get_settings(fresh=True)
    from firm.bench.synthetic import make_synthetic_bench
    from firm.launch.rollout import rollback, rollout
    from firm.models.images import shapes_image
    from firm.models.tiny import build_tiny_critic
    from firm.serving.client import RewardClient
    from firm.serving.service import start_service, stop_service
    from firm.storage import init_buckets

    init_buckets()
    critic = build_tiny_critic(work / "critic", size="tiny", format_steps=80)
    v1, v2 = _export(critic, work / "v1"), _export(critic, work / "v2")
    audit = work / "audit"
    make_synthetic_bench(audit, 4, seed=3, size=48, n_gen=0, requested=4)
    name = f"bench-{uuid.uuid4().hex[:6]}"
    rec = start_service(name, v1, startup_timeout=600)
    phase = ["before"]
    outcomes: dict[str, list[tuple[bool, float]]] = {}
    stop = threading.Event()
    errors: list[str] = []

    async def load() -> None:
        client = RewardClient(rec.grpc, timeout=300)
        item = (
            shapes_image([("square", "red")]),
            shapes_image([("square", "blue")]),
            "Make the red square blue.",
        )

        async def worker() -> None:
            while not stop.is_set():
                t0, p = time.perf_counter(), phase[0]
                try:
                    await client.ascore_edit([item])
                    ok = True
                except Exception as exc:
                    ok = False
                    errors.append(f"{type(exc).__name__}: {exc}")
                outcomes.setdefault(p, []).append((ok, time.perf_counter() - t0))

        await asyncio.gather(*[worker() for _ in range(a.concurrency)])
        await client.aclose()

    thread = threading.Thread(target=lambda: asyncio.run(load()), daemon=True)
    try:
        server_failures0 = _failures(rec.metrics)
        thread.start()
        time.sleep(a.settle)
        phase[0] = "rollout (stage, audit both, promote)"
        t0 = time.perf_counter()
        decision = rollout(name, v2, str(audit), margin=1.0, who="benchmark")
        t_rollout = time.perf_counter() - t0
        phase[0] = "rollback"
        t0 = time.perf_counter()
        rollback(name, who="benchmark")
        t_rollback = time.perf_counter() - t0
        phase[0] = "after"
        time.sleep(a.settle)
        stop.set()
        thread.join(timeout=600)
        server_failures = _failures(rec.metrics) - server_failures0
    finally:
        stop.set()
        stop_service(name)
    print(f"C = {a.concurrency}, promoted to version {decision.version}: {decision.reason}")
    print(
        f"rollout took {t_rollout:.1f} s, rollback {t_rollback:.1f} s; Triton-side failed inferences: {server_failures:g}"
    )
    print()
    print("| phase | requests | client errors | p50 latency (s) | p99 latency (s) |")
    print("|---|---|---|---|---|")
    for p, rows in outcomes.items():
        lat = sorted(t for ok, t in rows if ok)
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
        print(f"| {p} | {len(rows)} | {sum(not ok for ok, _ in rows)} | {p50:.2f} | {p99:.2f} |")
    if errors:
        print("\nfirst errors:", *sorted(set(errors))[:5], sep="\n  ")


if __name__ == "__main__":
    main()
