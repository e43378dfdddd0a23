"""Reward service throughput: Triton (dynamic batching on/off) vs in-process one-at-a-time vs in-process batched.

Run (CPU; what BENCHMARKS.md reports):
    .venv/bin/python benchmarks/reward_service.py --sizes tiny small

Each request is ONE edit (source, edited, instruction) sent to `firm_edit_reward`, which scores both axes
(execution + consistency) in one batched generate and applies CME. Clients are `--concurrency` asyncio workers on
one gRPC channel (tritonclient.grpc.aio), each sending batch-1 requests back to back for `--requests` requests in
all; we report requests/s and p50/p99 latency. Baselines, measured side by side in the same run on the same
critic directory:
- one-at-a-time: `Critic.edit_rewards([item])` in-process, one request after another (what a Flask/gunicorn
  worker without cross-request batching does);
- batched limit: `Critic.edit_rewards(items, batch_size=2·B)` in-process on B edits at once (B = 8, 16): the
  throughput a perfect batcher could reach with no serving overhead.

The machine's CPU is shared with other work, so the in-process and Triton measurements are interleaved for
`--rounds` rounds; the table reports medians over rounds, and each ratio is the median of the per-round ratios
(numerator and denominator measured minutes apart). The load average is printed with every round.

The critics are random-init (`firm.models.tiny.build_tiny_critic`) with EOS disabled in their generation config,
so every answer runs to exactly `--max-new-tokens` and every request costs the same. The service shares the 2
CPU cores with the benchmark's client, as a trainer would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def build_critic(size: str, root: Path) -> Path:
    from firm.models.tiny import build_tiny_critic

    d = build_tiny_critic(root / f"critic-{size}", size=size)  # type: ignore[arg-type]
    gc_path = d / "generation_config.json"
    gc = json.loads(gc_path.read_text()) if gc_path.exists() else {}
    gc["eos_token_id"] = None  # fixed-length answers: every request does the same work
    gc_path.write_text(json.dumps(gc))
    return d


def items(n: int) -> list[tuple[Any, Any, str]]:
    from firm.models.images import shapes_image

    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    out = []
    for k in range(n):
        a, b = colours[k % 6], colours[(k + 1) % 6]
        out.append(
            (shapes_image([("square", a)]), shapes_image([("square", b)]), f"Make the {a} square {b}.")
        )
    return out


class InProcess:
    """The same critic directory loaded in this process: one-at-a-time and batched `Critic.edit_rewards`."""

    def __init__(self, critic_dir: Path, args: argparse.Namespace) -> None:
        from firm.critic.critic import Critic, EditInput
        from firm.rewards.formulas import EditRewardConfig

        self.critic = Critic.from_pretrained(
            critic_dir, max_pixels=args.max_pixels, max_new_tokens=args.max_new_tokens
        )
        self.cfg = EditRewardConfig()
        self.data = [EditInput(source=s, edited=d, instruction=t) for s, d, t in items(64)]
        self.args = args
        self.critic.edit_rewards(self.data[:2], self.cfg, batch_size=4)  # warm-up

    def measure(self) -> dict[str, float]:
        out: dict[str, float] = {}
        n1 = self.args.one_at_a_time
        t = time.perf_counter()
        for k in range(n1):
            self.critic.edit_rewards([self.data[k % len(self.data)]], self.cfg, batch_size=2)
        out["one_at_a_time"] = n1 / (time.perf_counter() - t)
        for b in (8, 16):
            reps = max(2, self.args.batched_items // b)
            t = time.perf_counter()
            for r in range(reps):
                chunk = [self.data[(r * b + i) % len(self.data)] for i in range(b)]
                self.critic.edit_rewards(chunk, self.cfg, batch_size=2 * b)
            out[f"batched_{b}"] = reps * b / (time.perf_counter() - t)
        return out


def edit_inputs(n: int) -> Any:
    """`inputs(k)`: the k-th request (cycling over `n` encoded edits) as the `firm_edit_reward` model's gRPC inputs."""
    import numpy as np
    import tritonclient.grpc.aio as grpcclient

    from firm.serving.encoding import encode_image

    payloads = [(encode_image(s), encode_image(d), t.encode()) for s, d, t in items(n)]

    def inputs(k: int) -> list[Any]:
        out = []
        for name, v in zip(
            ("source_image", "edited_image", "instruction"), payloads[k % len(payloads)], strict=True
        ):
            i = grpcclient.InferInput(name, [1, 1], "BYTES")
            i.set_data_from_numpy(np.array([[v]], dtype=np.object_))
            out.append(i)
        return out

    return inputs


async def drive(url: str, concurrency: int, n: int) -> tuple[float, list[float]]:
    import tritonclient.grpc.aio as grpcclient

    inputs = edit_inputs(32)
    client = grpcclient.InferenceServerClient(url)

    # warm-up: one round at this concurrency
    await asyncio.gather(*(client.infer("firm_edit_reward", inputs(k)) for k in range(concurrency)))
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for k in counter:
            t = time.perf_counter()
            await client.infer("firm_edit_reward", inputs(k))
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    return n / wall, latencies


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def export(critic_dir: Path, args: argparse.Namespace, batching: bool, root: Path) -> str:
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository

    cfg = ExportConfig(
        critic=str(critic_dir),
        task="edit",
        threads=args.threads,
        max_new_tokens=args.max_new_tokens,
        max_pixels=args.max_pixels,
        batching=BatchingConfig(
            enabled=batching,
            max_batch_size=16,
            preferred_batch_sizes=args.preferred,
            max_queue_delay_us=args.queue_delay_us,
        ),
    )
    return export_repository(cfg, root / f"repo-{critic_dir.name}-{'db' if batching else 'nodb'}")


def median_round(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The round with the median throughput (with its own p50/p99)."""
    return sorted(runs, key=lambda r: r[0])[len(runs) // 2]


def bench_size(size: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Interleave in-process and Triton measurements for `--rounds` rounds; medians over rounds."""
    from contextlib import ExitStack

    from firm.serving.server import TritonServer

    d = build_critic(size, root)
    local = InProcess(d, args)
    modes = [("on", True)] + ([] if args.no_off else [("off", False)])
    base_runs: list[dict[str, float]] = []
    triton_runs: dict[str, dict[int, list[tuple[float, float, float]]]] = {
        m: {c: [] for c in args.concurrency} for m, _ in modes
    }
    with ExitStack() as stack:
        servers = {m: stack.enter_context(TritonServer(export(d, args, on, root))) for m, on in modes}
        for r in range(args.rounds):
            base = local.measure()
            base_runs.append(base)
            print(
                f"{size} round {r + 1}: in-process one-at-a-time {base['one_at_a_time']:.1f}/s, "
                f"batched-8 {base['batched_8']:.1f}/s, batched-16 {base['batched_16']:.1f}/s "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            for m, _ in modes:
                for c in args.concurrency:
                    n = max(args.requests, 4 * c)
                    rps, lat = asyncio.run(drive(servers[m].grpc_url, c, n))
                    res = (rps, pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3)
                    triton_runs[m][c].append(res)
                    print(
                        f"  triton {m:3s} C={c:<3d} {rps:7.1f} req/s  p50 {res[1]:7.1f} ms  p99 {res[2]:7.1f} ms",
                        flush=True,
                    )
    return {
        "in_process": {k: statistics.median(b[k] for b in base_runs) for k in base_runs[0]},
        **{m: {c: median_round(v) for c, v in runs.items()} for m, runs in triton_runs.items()},
        "rounds": {"in_process": base_runs, **triton_runs},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=192, help="requests per concurrency level")
    ap.add_argument("--one-at-a-time", type=int, default=48)
    ap.add_argument("--batched-items", type=int, default=96)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--max-pixels", type=int, default=64 * 64)
    ap.add_argument("--preferred", nargs="+", type=int, default=[8, 16])
    ap.add_argument("--queue-delay-us", type=int, default=5000)
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads, in-process and per server instance"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    ap.add_argument("--no-off", action="store_true", help="skip the dynamic-batching-off server")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    rows = []
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="firm-bench-serve-") as tmp:
        root = Path(tmp)
        for size in args.sizes:
            res = bench_size(size, args, root)
            raw[size] = res
            base, on, off = res["in_process"], res["on"], res.get("off", {})
            rounds = res["rounds"]
            for c in args.concurrency:
                key = "batched_16" if c >= 16 else "batched_8" if c >= 8 else "one_at_a_time"
                # ratios per round (in-process and Triton measured minutes apart), then their median
                per_round = list(zip(rounds["in_process"], rounds["on"][c], strict=True))
                r_one = statistics.median(t[0] / b["one_at_a_time"] for b, t in per_round)
                r_lim = statistics.median(t[0] / b[key] for b, t in per_round)
                rps, p50, p99 = on[c]
                off_s = f"{off[c][0]:.1f}" if c in off else "-"
                rows.append(
                    f"| {size} | {c} | {rps:.1f} | {p50:.0f} / {p99:.0f} | {off_s} | {base['one_at_a_time']:.1f} | "
                    f"{base[key]:.1f} ({key.replace('_', ' ')}) | {r_one:.2f}× | {r_lim:.0%} |"
                )
    load_end = os.getloadavg()
    print()
    print(
        f"load average: start {load[0]:.2f}, end {load_end[0]:.2f}; preferred={args.preferred}, "
        f"queue delay {args.queue_delay_us} µs, max_new_tokens={args.max_new_tokens}, "
        f"threads={args.threads or 'torch default'}"
    )
    print(
        "| critic | C | Triton DB on req/s | p50 / p99 ms | DB off req/s | one-at-a-time /s | limit /s (batch) | "
        "on ÷ one-at-a-time | on ÷ limit |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2, default=str))


if __name__ == "__main__":
    main()
