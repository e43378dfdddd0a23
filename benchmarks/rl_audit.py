"""What the critic audit during RL (issue 29) costs: a tiny run with and without `audit.bench`, side by side.

Tiny SD3 generation policy, rewards from the tiny FIRM critic behind the real tritonserver (gRPC) on 127.0.0.1; the
audit sends a synthetic FIRM-Bench slice (`audit.max_items`, the recipes' default 32 generation items) through the same
endpoint. Two trainers — one without an audit set, one auditing after every `--every` steps — are stepped alternately
(side by side under the same machine load). Reported: the median step time of each, the median audit time, the
overhead measured at `--every`, and what the audit costs at the recipes' default intervals: one audit every N steps
costs audit / (N × step + audit) of the wall time.

    .venv/bin/python benchmarks/rl_audit.py --steps 6 --every 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def _loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def _trainer(
    args: argparse.Namespace, policy_dir: Path, prompts: Path, url: str, out: Path, bench: Path | None
):
    from firm.rl.config import config_from_dict
    from firm.rl.trainer import Trainer

    cfg = config_from_dict(
        {
            "name": "bench-audit" if bench else "bench",
            "task": "gen",
            "output_uri": str(out),
            "steps": 10_000,
            "device": "cpu",
            "policy": {
                "kind": "sd3",
                "uri": str(policy_dir),
                "resolution": args.resolution,
                "max_sequence_length": 16,
            },
            "lora": {"rank": 4, "alpha": 8},
            "sampling": {
                "num_steps": args.num_steps,
                "group_size": args.group,
                "prompts_per_step": args.prompts,
            },
            "nft": {"timestep_fraction": 0.2},
            "reward": {"kind": "triton", "url": url, "async_overlap": True, "quality": False},
            "data": {"prompts": str(prompts)},
            "checkpoint": {"every_steps": 10_000},
            "monitor": {"tensorboard": False},
            "audit": {
                "bench": str(bench) if bench else None,
                "every_steps": args.every,
                "max_items": args.items,
            },
        }
    )
    return Trainer(cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="steps per trainer after a warm-up step")
    ap.add_argument("--every", type=int, default=2, help="audit.every_steps of the audited trainer")
    ap.add_argument("--items", type=int, default=32, help="audit.max_items (the recipes' default)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--num-steps", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from firm.bench.synthetic import make_synthetic_bench
    from firm.models.tiny import build_tiny_critic
    from firm.rl.policies.tiny import build_tiny_sd3, write_prompts
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository
    from firm.serving.server import TritonServer

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="firm-rl-audit-bench-"))
    policy_dir = build_tiny_sd3(work / "sd3", sample_size=args.resolution // 8)
    prompts = write_prompts(work / "prompts.txt")
    bench = work / "bench"
    make_synthetic_bench(bench, 0, n_gen=args.items, size=args.resolution)
    critic = build_tiny_critic(work / "critic", size="tiny", format_steps=80)
    repo = export_repository(
        ExportConfig(
            critic=str(critic), task="gen", critic_model=False, max_new_tokens=args.new_tokens,
            max_pixels=64 * 64, gen_quality=False, threads=1,
            batching=BatchingConfig(max_batch_size=16, preferred_batch_sizes=[4, 8, 16], max_queue_delay_us=2_000),
        ),
        work / "repo",
    )  # fmt: skip
    load_before = _loadavg()
    plain_steps: list[float] = []
    audited_steps: list[float] = []  # the audited trainer's whole iteration: step + its audit when one is due
    audits: list[float] = []
    maes: list[float] = []
    with TritonServer(repo) as srv:
        plain = _trainer(args, policy_dir, prompts, srv.grpc_url, work / "out-plain", None)
        audited = _trainer(args, policy_dir, prompts, srv.grpc_url, work / "out-audit", bench)
        for t in (plain, audited):  # warm-up: first-call costs of the policy and the service
            t.train_step()
        for i in range(args.steps):
            for which in ("plain", "audited") if i % 2 == 0 else ("audited", "plain"):
                t = plain if which == "plain" else audited
                t0 = time.perf_counter()
                res = t.train_step()
                _, audit = t._watch(
                    res
                )  # what the training loop does after each step: alarms, audit when due
                if which == "audited":
                    if audit is not None:
                        audits.append(res.metrics["time/audit"])
                        maes.append(res.metrics.get("audit/mae", float("nan")))
                    audited_steps.append(time.perf_counter() - t0)
                else:
                    plain_steps.append(time.perf_counter() - t0)
    step = statistics.median(plain_steps)
    audit = statistics.median(audits)
    measured = sum(audited_steps) / sum(plain_steps) - 1.0
    lines = [
        f"Tiny SD3 ({args.resolution} px, {args.num_steps} rollout steps), {args.prompts} prompts × group {args.group} "
        f"per step, tiny critic (instruction axis, ≤{args.new_tokens} new tokens, 1 thread) behind tritonserver on "
        f"127.0.0.1, trainer on {args.threads} thread(s); the audit: {args.items} synthetic FIRM-Bench generation items "
        f"through the same endpoint. {args.steps} steps per trainer after a warm-up, alternating; seconds. "
        f"1-minute load average {load_before} before, {_loadavg()} after.",
        "",
        "| run | step (median) | audit (median) | audits | audit MAE | wall time vs no audit |",
        "|---|---|---|---|---|---|",
        f"| no audit | {step:.3f} | | | | |",
        f"| audit every {args.every} steps | {statistics.median(audited_steps):.3f} | {audit:.3f} | {len(audits)} | "
        f"{statistics.median(maes):.2f} | +{measured:.1%} |",
        "",
        "| audit.every_steps | audit share of wall time (audit / (N × step + audit)) |",
        "|---|---|",
    ]
    for n in sorted({args.every, 25, 30, 50}):
        lines.append(
            f"| {n}{' (measured above)' if n == args.every else ''} | {audit / (n * step + audit):.1%} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
