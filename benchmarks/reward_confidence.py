"""What confidence costs in serving: Triton `firm_edit_reward` with the `confidence` output filled vs left NaN.

Run (CPU; what BENCHMARKS.md reports):
    .venv/bin/python benchmarks/reward_confidence.py

The same tiny critic directory is exported twice with `ExportConfig(confidence=True)` (the default: the score
digits' logits are recorded during generation and each judgement and reward gets `[p, entropy, std]`) and
`confidence=False` (text readout with no digit recording: the `confidence` tensor is all NaN, everything else
identical), both with dynamic batching on (max batch 16, preferred [8, 16]). Both servers run at once; requests
are ONE edit each, sent by `--concurrency` asyncio workers on one gRPC channel (batch-1 requests back to back),
as in `benchmarks/reward_service.py`.

Side by side in one run: the two servers are measured alternately for `--rounds` rounds (A B, then B A, ... so
neither always goes first on a CPU shared with other work); the table reports the median throughput over rounds
and, per concurrency, the median of the per-round ratios with ÷ without (1.00 = free; the issue's budget is a cost
of at most 5 % at C = 32, i.e. a ratio ≥ 0.95). Each server is warmed up once, with one round of requests at the
concurrency, before the first measurement. The server without confidence must answer NaN every time (checked).

The critic is the tiny one taught FIRM's answer formats (`build_tiny_critic(format_steps=80)`, as the tests'
`formatted_critic_dir`): its answers parse, so the confidence server records the digit logits during generation,
locates the score digit in each answer and computes every judgement's and reward's confidence — all the work
confidence adds. Both servers run the same weights greedily, so they generate the same tokens. The share of
responses with a finite confidence is printed (the server without confidence must have none).

Then, with no server, the critic's own work: one batch of 16 edits × 2 axes judged in process with confidence on and
off alternately (`--in-process-reps` each), the fastest of each compared — the least disturbed by other work, so
the cleaner number on a shared machine; the servers add the same Triton overhead on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from reward_service import (
    edit_inputs,
    items,
    pct,
)  # the same edits, requests and percentile as the serving benchmark

# per server: [responses with a finite confidence, responses]
FINITE: dict[str, list[int]] = {"with": [0, 0], "without": [0, 0]}


def build_critic(size: str, root: Path) -> Path:
    from firm.models.tiny import build_tiny_critic

    return build_tiny_critic(root / f"critic-{size}", size=size, format_steps=80)  # type: ignore[arg-type]


async def drive(url: str, concurrency: int, n: int, mode: str, warmup: bool) -> tuple[float, list[float]]:
    import numpy as np
    import tritonclient.grpc.aio as grpcclient

    inputs = edit_inputs(32)
    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("reward", "confidence")]

    def check(res: Any) -> None:
        conf = res.as_numpy("confidence")
        if conf.shape[-1] != 3:
            raise SystemExit(f"confidence output of shape {conf.shape}, expected (..., 3)")
        finite = bool(np.isfinite(conf).all())
        if mode == "without" and finite:
            raise SystemExit("the server without confidence returned a finite confidence")
        FINITE[mode][0] += int(finite)
        FINITE[mode][1] += 1

    if warmup:  # once per server: one round at this concurrency
        for r in await asyncio.gather(
            *(client.infer("firm_edit_reward", inputs(k), outputs=outputs) for k in range(concurrency))
        ):
            check(r)
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for k in counter:
            t = time.perf_counter()
            res = await client.infer("firm_edit_reward", inputs(k), outputs=outputs)
            latencies.append(time.perf_counter() - t)
            check(res)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    return n / wall, latencies


def export(critic_dir: Path, args: argparse.Namespace, confidence: bool, root: Path) -> str:
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository

    cfg = ExportConfig(
        critic=str(critic_dir),
        task="edit",
        threads=args.threads,
        max_new_tokens=args.max_new_tokens,
        max_pixels=args.max_pixels,
        confidence=confidence,
        batching=BatchingConfig(
            enabled=True,
            max_batch_size=16,
            preferred_batch_sizes=[8, 16],
            max_queue_delay_us=args.queue_delay_us,
        ),
    )
    return export_repository(cfg, root / f"repo-{'conf' if confidence else 'noconf'}")


def in_process_parts(critic_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """The per-judgement arithmetic alone (µs): `judgement_confidence` + `reward_confidence` on a parsed answer's
    digit distributions, what the confidence server adds after generation for every parsed edit."""
    from firm.rewards.confidence import judgement_confidence, reward_confidence
    from firm.rewards.formulas import cme

    dists = [[0.05, 0.1, 0.6, 0.15, 0.1], [0.02, 0.08, 0.2, 0.5, 0.2]]
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        ex, co = judgement_confidence([dists[0]], 3), judgement_confidence([dists[1]], 4)
        reward_confidence({"execution": ex, "consistency": co}, cme)
    out = {"confidence_arithmetic_us": (time.perf_counter() - t) / n * 1e6}
    if args.in_process_reps:
        out.update(in_process_batches(critic_dir, args))
    return out


def in_process_batches(critic_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """The critic's own work with and without confidence, no server: one batch of 16 edits × 2 axes judged with
    `confidence=True` and `False` alternately `--in-process-reps` times each; the fastest of each (the least
    disturbed by other work on the machine) and their ratio."""
    from firm.critic.critic import Critic, CriticRequest

    critic = Critic.from_pretrained(
        critic_dir, max_pixels=args.max_pixels, max_new_tokens=args.max_new_tokens
    )
    reqs = [
        CriticRequest(task="edit", axis=axis, images=[s, d], instruction=t)
        for s, d, t in items(16)
        for axis in ("execution", "consistency")
    ]
    critic.judge(reqs, batch_size=len(reqs), confidence=True)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.in_process_reps):
        for conf in (True, False) if r % 2 == 0 else (False, True):
            t = time.perf_counter()
            critic.judge(reqs, batch_size=len(reqs), confidence=conf)
            times[conf].append(time.perf_counter() - t)
    best_with, best_without = min(times[True]), min(times[False])
    return {
        "in_process_best_with_s": best_with,
        "in_process_best_without_s": best_without,
        "in_process_ratio": best_without / best_with,  # throughput with ÷ without
        "in_process_times": {"with": times[True], "without": times[False]},  # type: ignore[dict-item]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--concurrency", nargs="+", type=int, default=[32])
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level and round")
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds (medians reported)")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="enough for the formatted answers to end")
    ap.add_argument("--max-pixels", type=int, default=64 * 64)
    ap.add_argument("--queue-delay-us", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per server instance (0: default)")
    ap.add_argument(
        "--in-process-reps",
        type=int,
        default=8,
        help="in-process batches with and without confidence (0: none)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args()

    from contextlib import ExitStack

    from firm.serving.server import TritonServer

    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    modes = {"with": True, "without": False}
    runs: dict[str, dict[int, list[tuple[float, float, float]]]] = {
        m: {c: [] for c in args.concurrency} for m in modes
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="firm-bench-conf-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        d = build_critic(args.size, root)
        parts = in_process_parts(d, args)
        servers = {m: stack.enter_context(TritonServer(export(d, args, on, root))) for m, on in modes.items()}
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for c in args.concurrency:
                for m in order:
                    rps, lat = asyncio.run(
                        drive(servers[m].grpc_url, c, max(args.requests, c), m, warmup=r == 0)
                    )
                    res = (rps, pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3)
                    runs[m][c].append(res)
                    print(
                        f"round {r + 1} C={c:<3d} {m:7s} confidence {rps:7.1f} req/s  p50 {res[1]:7.1f} ms  "
                        f"p99 {res[2]:7.1f} ms  (load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
    load_end = os.getloadavg()
    print()
    print(
        f"load average: start {load[0]:.2f}, end {load_end[0]:.2f}; {args.size} critic, max_new_tokens="
        f"{args.max_new_tokens}, {args.rounds} rounds, {time.perf_counter() - t_start:.0f} s; confidence arithmetic "
        f"per edit (2 judgements + the reward) {parts['confidence_arithmetic_us']:.0f} µs in process; responses "
        f"with a finite confidence: with {FINITE['with'][0]}/{FINITE['with'][1]}, without "
        f"{FINITE['without'][0]}/{FINITE['without'][1]}"
    )
    print(
        "| critic | C | with confidence req/s | p50 / p99 ms | without req/s | p50 / p99 ms | "
        "with ÷ without (median of rounds) | cost |"
    )
    print("|---|---|---|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    for c in args.concurrency:
        w, wo = runs["with"][c], runs["without"][c]
        ratio = statistics.median(a[0] / b[0] for a, b in zip(w, wo, strict=True))
        med = {m: sorted(runs[m][c], key=lambda x: x[0])[len(runs[m][c]) // 2] for m in modes}
        summary[str(c)] = {"ratio": ratio, "with": med["with"], "without": med["without"]}
        cost = 1 - ratio
        print(
            f"| {args.size} | {c} | {med['with'][0]:.1f} | {med['with'][1]:.0f} / {med['with'][2]:.0f} | "
            f"{med['without'][0]:.1f} | {med['without'][1]:.0f} / {med['without'][2]:.0f} | {ratio:.3f} | "
            f"{cost:+.1%} |"
        )
    if "in_process_ratio" in parts:
        print(
            f"\nIn process, no server (16 edits × 2 axes in one batch, fastest of {args.in_process_reps}): with "
            f"confidence {parts['in_process_best_with_s']:.3f} s, without {parts['in_process_best_without_s']:.3f} s "
            f"— throughput with ÷ without {parts['in_process_ratio']:.3f}"
        )
    if args.json:
        raw = {"runs": runs, "summary": summary, "finite": FINITE, **parts}
        args.json.write_text(json.dumps(raw, indent=2, default=str))
    worst = summary.get("32", {}).get("ratio")
    if worst is not None and not math.isnan(worst):
        print(f"\nC=32: serving with confidence keeps {worst:.1%} of the throughput without it")


if __name__ == "__main__":
    main()
