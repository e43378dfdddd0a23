"""RL step time and its split (rollout / reward wait / update): synchronous vs asynchronous rewards, NFT vs GRPO.

Tiny SD3 policy, rewards from the tiny FIRM critic behind the real tritonserver (gRPC), all on this machine, with the
trainer's defaults — the official trainers' update schedule: one std over the step's rewards and one accumulated
optimizer step per RL step (so the update can only start once every reward of the step is in), dpm2 NFT rollouts,
per-sample timesteps, GRPO with CFG (`--guidance`). With `reward.async_overlap` the critic scores prompt group i while
group i+1 rolls out, and while the last groups are scored the trainer computes the update's no-grad predictions
(NFT's old-policy and reference velocities, GRPO's reference means), so the step pays only the reward latency that
neither could hide.

    .venv/bin/python benchmarks/rl_step.py --steps 4 --prompts 4 --group 4 --num-steps 20 --out /tmp/rl_step.md

`--policy KIND [KIND ...]`: the NFT step time of policy families side by side (any kind of
`firm.rl.policies.registry.FAMILIES`), each as a ratio to SD3, with a cheap in-process reward (brightness) so only the
policy side is timed. `--size tiny` (default): each family's tiny model (`python -m firm.rl.policies.tiny KIND`) with
its tiny recipe's policy settings (`rl/tiny_<kind>_nft`, where one exists) at `--resolution`, all trainers built first
and stepped in rotating order, so every round measures all families under the same machine load; the ratio is the
median over rounds of (family step / SD3 step in that round). `--size real`: each family's paper-scale recipe (the
shipped non-tiny NFT recipe of that kind) on one accelerator, one family at a time, with one rank's share of the
recipe's step on its 8-GPU job (`--prompts`, default prompts_per_step / 8); `--uri KIND=PATH` points a family at
local weights, `--set [KIND:]key=value` overrides a recipe setting (for one family or all).

    .venv/bin/python benchmarks/rl_step.py --policy sd3 flux_kontext flux2_klein --steps 8 --resolution 32
    .venv/bin/python benchmarks/rl_step.py --policy sd3 flux_kontext flux2_klein --size real --device cuda --steps 3
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


def _policy_config(kind: str, args: argparse.Namespace, work: Path) -> dict:
    """The NFT run config of one family: its tiny model and tiny recipe's policy settings, or its paper recipe."""
    import inspect

    import yaml

    from firm.recipes import list_recipes
    from firm.rl.config import apply_overrides
    from firm.rl.policies.registry import family, tiny_builder
    from firm.rl.policies.tiny import write_edit_prompts, write_prompts

    fam = family(kind, "--policy")
    recipes = {r.name: yaml.safe_load(r.path.read_text()) for r in list_recipes("rl")}
    edit = fam.task == "edit"
    prompts = (write_edit_prompts if edit else write_prompts)(
        work / kind / ("prompts.jsonl" if edit else "p.txt")
    )
    if args.size == "tiny":
        build = tiny_builder(kind)
        kw = (
            {"sample_size": args.resolution // 8}
            if "sample_size" in inspect.signature(build).parameters
            else {}
        )
        tiny = recipes.get(f"rl/tiny_{kind}_nft", {}).get("policy", {})
        policy = {
            **tiny,
            "kind": kind,
            "uri": str(build(work / kind / "pipe", **kw)),
            "resolution": args.resolution,
        }
        data = {
            "task": fam.task,
            "policy": policy,
            "lora": {"rank": 4, "alpha": 8},
            "sampling": {
                "num_steps": args.num_steps,
                "group_size": args.group,
                "prompts_per_step": args.prompts,
            },
        }
    else:
        found = [
            d
            for n, d in sorted(recipes.items())
            if not n.startswith("rl/tiny_") and d["policy"]["kind"] == kind
        ]
        found = [d for d in found if d.get("algorithm", "nft") == "nft"] or found
        if not found:
            raise SystemExit(f"--policy {kind} --size real: no shipped paper-scale recipe of that family")
        data = found[0]
        uris = dict(u.split("=", 1) for u in args.uri)
        data["policy"]["uri"] = uris.get(kind, data["policy"]["uri"])
        # one rank's share of the recipe's step on its 8-GPU job
        per_rank = max(1, data["sampling"]["prompts_per_step"] // 8)
        data["sampling"]["prompts_per_step"] = args.prompts or per_rank
        data["optim"] = {**data.get("optim", {}), "updates_per_step": 1}
    data.update(
        name=f"bench-{kind}",
        algorithm="nft",
        output_uri=str(work / kind / "out"),
        steps=10_000,
        device=args.device,
        reward={"kind": "brightness", "async_overlap": False},
        checkpoint={"every_steps": 10_000},
        monitor={"tensorboard": False, "eval_every": 0},
    )
    data["data"] = {"prompts": str(prompts)}
    if args.train_fraction is not None:
        data.setdefault("nft", {})["timestep_fraction"] = args.train_fraction
    mine = []  # --set KEY=VALUE for every family, --set KIND:KEY=VALUE for one
    for raw in args.set:
        key, _, value = raw.partition("=")
        target, _, key = key.rpartition(":")
        if target in ("", kind):
            mine.append(f"{key}={value}")
    return apply_overrides(data, mine)


def policy_main(args: argparse.Namespace) -> None:
    """`--policy`: NFT step time per family, as a ratio to SD3 (see the module docstring)."""
    import gc

    import torch

    from firm.logs import quiet_libraries
    from firm.rl.config import config_from_dict
    from firm.rl.trainer import Trainer

    quiet_libraries()
    torch.set_num_threads(args.threads)
    if args.size == "tiny":
        args.resolution = args.resolution or 32
        args.prompts = args.prompts or 2
    kinds = ["sd3", *[k for k in dict.fromkeys(args.policy) if k != "sd3"]]
    keys = ("time/step", "time/rollout", "time/update")
    times: dict[str, list[dict]] = {k: [] for k in kinds}
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="firm-rl-policy-bench-") as tmp:
        work = Path(tmp)

        def trainer(kind: str) -> Trainer:
            t = Trainer(config_from_dict(_policy_config(kind, args, work)))
            t.train_step()  # warm-up
            return t

        if args.size == "tiny":  # all side by side: every round steps each family once, in rotating order
            trainers = {k: trainer(k) for k in kinds}
            for i in range(args.steps):
                for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
                    m = trainers[kind].train_step().metrics
                    times[kind].append({k: m[k] for k in keys})
        else:  # one paper-scale family at a time
            for kind in kinds:
                t = trainer(kind)
                for _ in range(args.steps):
                    m = t.train_step().metrics
                    times[kind].append({k: m[k] for k in keys})
                t.metrics.close()
                del t
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    med = {k: {key: statistics.median(r[key] for r in times[k]) for key in keys} for k in kinds}
    lines = [
        f"NFT step per policy family, {args.size} size on {args.device} ({args.threads} thread(s)), cheap in-process "
        f"reward (brightness), {args.steps} steps per family after a warm-up; medians, seconds. "
        + (
            f"Tiny models at {args.resolution} px, {args.num_steps} rollout steps, {args.prompts} prompts × group "
            f"{args.group} per step, LoRA r=4 on each family's official targets; families stepped in rotating order "
            "(side by side under the same load); ratio = median over rounds of family step / SD3 step. "
            if args.size == "tiny"
            else "Each family's paper-scale NFT recipe, one rank's share of its step (prompts_per_step / 8); "
            "ratio = median step / SD3's. "
        )
        + f"1-minute load average {load_before} before, {_loadavg()} after.",
        "",
        "| policy | step | rollout | update | step / SD3 |",
        "|---|---|---|---|---|",
    ]
    for kind in kinds:
        if args.size == "tiny":
            ratio = statistics.median(
                a["time/step"] / b["time/step"] for a, b in zip(times[kind], times["sd3"], strict=True)
            )
        else:
            ratio = med[kind]["time/step"] / med["sd3"]["time/step"]
        m = med[kind]
        lines.append(
            f"| {kind} | {m['time/step']:.3f} | {m['time/rollout']:.3f} | {m['time/update']:.3f} | {ratio:.2f}× |"
        )
    real = f".venv/bin/python benchmarks/rl_step.py --policy {' '.join(kinds)} --size real --device cuda --steps 3"
    lines += [
        "",
        "Real-size step on a GPU (each family's paper recipe on one accelerator, one rank's share of the step; "
        "weights from the Hub or `--uri KIND=/local/dir`):",
        f"    {real}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = " ".join(
            [
                ".venv/bin/python benchmarks/rl_step.py --policy",
                *kinds,
                f"--size {args.size}",
                f"--steps {args.steps}",
            ]
            + ([f"--resolution {args.resolution}"] if args.size == "tiny" else [f"--device {args.device}"])
            + [f"--uri {u}" for u in args.uri]
            + [f"--set {x}" for x in args.set]
        )
        args.out.write_text(
            f"## RL step per policy family (issue 17)\n\nCommand: `{cmd} --out {args.out}`\n\n{text}\n"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="pairs of (sync, async) steps per run")
    ap.add_argument(
        "--prompts", type=int, default=None, help="prompts per step (default 4; --policy: see above)"
    )
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--num-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--train-fraction",
        type=float,
        default=None,
        help="rollout timesteps trained on (default 0.2: the update is the same "
        "in sync and async mode; a small one keeps it from drowning the overlap being measured; --policy: the "
        "recipes' own, 0.99)",
    )
    ap.add_argument("--resolution", type=int, default=None, help="pixels (default 64; --policy tiny: 32)")
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
    ap.add_argument(
        "--policy",
        nargs="+",
        default=None,
        metavar="KIND",
        help="time the NFT step of these policy families against SD3 instead (see the module docstring)",
    )
    ap.add_argument(
        "--size", choices=("tiny", "real"), default="tiny", help="--policy: tiny models or recipes"
    )
    ap.add_argument("--device", default="cpu", help="--policy: cpu | cuda")
    ap.add_argument(
        "--uri", action="append", default=[], metavar="KIND=PATH", help="--size real: local weights"
    )
    ap.add_argument(
        "--set", action="append", default=[], metavar="[KIND:]KEY=VALUE", help="--policy: config override"
    )
    args = ap.parse_args()
    if args.policy:
        policy_main(args)
        return
    args.resolution = args.resolution or 64
    args.prompts = args.prompts or 4
    args.train_fraction = 0.2 if args.train_fraction is None else args.train_fraction

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
