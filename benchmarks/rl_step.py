"""RL step time and its split (rollout / reward wait / update): synchronous vs asynchronous rewards, NFT vs GRPO.

Tiny SD3 policy, rewards from the tiny FIRM critic behind the real tritonserver (gRPC), all on this machine, with the
trainer's defaults — the official trainers' update schedule: one std over the step's rewards and one accumulated
optimizer step per RL step (so the update can only start once every reward of the step is in), dpm2 NFT rollouts,
per-sample timesteps, GRPO with CFG (`--guidance`). With `reward.async_overlap` the critic scores prompt group i while
group i+1 rolls out, and while the last groups are scored the trainer computes the update's no-grad predictions
(NFT's old-policy and reference velocities, GRPO's reference means), so the step pays only the reward latency that
neither could hide.

    .venv/bin/python benchmarks/rl_step.py --steps 4 --prompts 4 --group 4 --num-steps 20 --out /tmp/rl_step.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path


def run(
    algorithm: str, args: argparse.Namespace, policy_dir: Path, prompts: Path, url: str
) -> dict[bool, list[dict]]:
    """One trainer; after a warm-up step, `args.steps` pairs of steps, one synchronous and one asynchronous in
    alternating order, so both modes are measured side by side under the same machine load."""
    import torch

    from firm.rl.config import config_from_dict
    from firm.rl.trainer import Trainer

    torch.set_num_threads(args.threads)
    keys = ("time/step", "time/rollout", "time/reward_wait", "time/update", "reward/parse_failure_rate")
    out: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict(
            {
                "name": "bench",
                "task": "gen",
                "algorithm": algorithm,
                "output_uri": tmp,
                "steps": 2 * args.steps + 1,
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
                "nft": {"timestep_fraction": args.train_fraction},
                "grpo": {"timestep_fraction": args.train_fraction, "guidance_scale": args.guidance},
                "reward": {"kind": "triton", "url": url, "async_overlap": True, "quality": False},
                "data": {"prompts": str(prompts)},
                "checkpoint": {"every_steps": 10_000},
                "monitor": {"tensorboard": False},
            }
        )
        trainer = Trainer(cfg)
        trainer.train_step()  # warm-up
        for pair in range(args.steps):
            for overlap in (False, True) if pair % 2 == 0 else (True, False):
                trainer.cfg.reward.async_overlap = overlap
                metrics = trainer.train_step().metrics
                out[overlap].append({k: metrics[k] for k in keys})
        trainer.metrics.close()
        trainer.reward.close()  # type: ignore[attr-defined]
    return out


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="pairs of (sync, async) steps per run")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--num-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--train-fraction",
        type=float,
        default=0.2,
        help="rollout timesteps trained on (the update is the same "
        "in sync and async mode; a small one keeps it from drowning the overlap being measured)",
    )
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument(
        "--guidance", type=float, default=4.5, help="GRPO classifier-free guidance (Flow-GRPO: 4.5)"
    )
    ap.add_argument(
        "--new-tokens", type=int, default=40, help="the tiny critic needs ~40 to finish an answer"
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="trainers per algorithm; medians over all their steps"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from firm.models.tiny import build_tiny_critic
    from firm.rl.policies.tiny import build_tiny_sd3, write_prompts
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository
    from firm.serving.server import TritonServer

    work = Path(tempfile.mkdtemp(prefix="firm-rl-bench-"))
    policy_dir = build_tiny_sd3(work / "sd3", sample_size=args.resolution // 8)
    prompts = write_prompts(work / "prompts.txt")
    critic = build_tiny_critic(work / "critic", size="tiny", format_steps=80)
    repo = export_repository(
        ExportConfig(
            critic=str(critic),
            task="gen",
            critic_model=False,
            max_new_tokens=args.new_tokens,
            max_pixels=64 * 64,
            gen_quality=False,
            threads=1,  # one core for the critic, one for the trainer: overlap needs a free core
            batching=BatchingConfig(
                max_batch_size=16, preferred_batch_sizes=[4, 8, 16], max_queue_delay_us=2_000
            ),
        ),
        work / "repo",
    )
    rows = []
    load_before = _loadavg()
    with TritonServer(repo) as srv:
        for algorithm in ("nft", "grpo"):
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(args.repeats):
                for overlap, steps in run(algorithm, args, policy_dir, prompts, srv.grpc_url).items():
                    runs[overlap] += steps
            sync, asyn = (
                {k: statistics.median(r[k] for r in runs[o]) for k in runs[o][0]} for o in (False, True)
            )
            pairs = [a["time/step"] / b["time/step"] for a, b in zip(runs[True], runs[False], strict=True)]
            asyn["pair_ratio"] = statistics.median(pairs)
            asyn["pair_ratio_iqr"] = (
                statistics.quantiles(pairs, n=4)[::2] if len(pairs) > 1 else [pairs[0]] * 2
            )
            rows.append((algorithm, sync, asyn))
    lines = [
        f"Tiny SD3 ({args.resolution} px, {args.num_steps} rollout steps), {args.prompts} prompts × group "
        f"{args.group} per step, tiny critic (instruction axis, ≤{args.new_tokens} new tokens, 1 thread) behind "
        f"tritonserver on 127.0.0.1, trainer on 1 thread; one accumulated update per step, global-std advantages, "
        f"NFT dpm2 rollouts, {args.train_fraction:g} of the timesteps trained, GRPO CFG {args.guidance:g}; medians "
        f"over {args.repeats} runs × {args.steps} pairs of steps after a warm-up, each pair one sync and one async "
        "step in alternating order (side by side under the same load); seconds. A 2-core CPU "
        f"machine shared with other jobs: 1-minute load average {load_before} before the run, {_loadavg()} after "
        "(both modes suffer from load, async more, since its overlap needs the second core).",
        "",
        "| algorithm | rewards | step | rollout | reward wait | update | parse failures | async / sync: step | "
        "async / sync: rollout + reward wait | async / sync per step pair: median (quartiles) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for algorithm, sync, asyn in rows:
        for name, t in (("sync", sync), ("async", asyn)):
            ratio = f"{asyn['time/step'] / sync['time/step']:.2f}×" if name == "async" else ""

            def collect(x: dict) -> float:
                return x["time/rollout"] + x["time/reward_wait"]

            cratio = f"{collect(asyn) / collect(sync):.2f}×" if name == "async" else ""
            pratio = ""
            if name == "async":
                lo, hi = asyn["pair_ratio_iqr"]
                pratio = f"{asyn['pair_ratio']:.2f}× ({lo:.2f}–{hi:.2f})"
            lines.append(
                f"| {algorithm} | {name} | {t['time/step']:.3f} | {t['time/rollout']:.3f} | "
                f"{t['time/reward_wait']:.3f} | {t['time/update']:.3f} | "
                f"{t['reward/parse_failure_rate']:.0%} | {ratio} | {cratio} | {pratio} |"
            )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        header = (
            "## RL step (issues 7, 14): sync vs async rewards, NFT vs GRPO\n\n"
            "Command: `.venv/bin/python benchmarks/rl_step.py "
            f"--steps {args.steps} --prompts {args.prompts} --group {args.group} --num-steps {args.num_steps} "
            f"--resolution {args.resolution} --new-tokens {args.new_tokens} --repeats {args.repeats} "
            f"--train-fraction {args.train_fraction} --guidance {args.guidance:g} "
            f"--out {args.out}`\n\n"
        )
        args.out.write_text(header + text + "\n")


if __name__ == "__main__":
    main()
