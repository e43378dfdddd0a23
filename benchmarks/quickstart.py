"""The quickstart's wall time, and what the KFP local runner adds over calling the same stages directly.

    .venv/bin/python benchmarks/quickstart.py [--size tiny] [--task edit] [--repeats 1] [--out FILE]

Each repeat runs, one after the other, each in a fresh interpreter and a fresh FIRM_HOME with the same inputs:
- "pipeline": `firmctl quickstart --size SIZE` (the `firm` pipeline through the KFP local runner: one subprocess per
  step, executor I/O, artifacts, the exit handler), timed end to end including input preparation and the report;
- "direct": the same inputs, then the pipeline's component functions (`<component>.python_func`, the very code each
  step runs) called in DAG order in one process with the same arguments — no orchestrator, no step processes.
Prints one JSON line per side and repeat and a markdown summary (ratio pipeline / direct; target ≤ 1.15).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _direct(work: Path, size: str, tasks: list[str]) -> float:
    """Inputs as the quickstart makes them, then every component function in DAG order, task after task."""
    from kfp.dsl import HTML, Dataset, Markdown, Metrics, Model
    from rich.console import Console

    from firm.quickstart.run import SIZES, pipeline_parameters, prepare_inputs
    from firm.quickstart.teacher import serve_teacher
    from pipelines.api import validate_params
    from pipelines.components.bench import bench_critic
    from pipelines.components.data import curate_dataset
    from pipelines.components.evaluate import eval_policy
    from pipelines.components.launch import rl_train, train_critic
    from pipelines.components.serve import deploy_reward_service, export_to_triton, stop_reward_service

    arts = work / "artifacts"
    arts.mkdir(parents=True)
    t0 = time.perf_counter()
    preset = SIZES[size]
    for task in tasks:

        def art(cls, name: str):  # type: ignore[no-untyped-def]
            return cls(name=name, uri=str(arts / f"{task}-{name}"), metadata={})  # noqa: B023

        inputs = prepare_inputs(work, task, preset, Console(stderr=True))  # type: ignore[arg-type]
        run_id = f"direct-{task}"
        with serve_teacher() as (url, _):
            p = validate_params("firm", pipeline_parameters(
                task, preset, critic=Path(inputs["critic"]), policy=Path(inputs["policy"]),  # type: ignore[arg-type]
                manifest=Path(inputs["manifest"]), teacher=url, bench=str(inputs["bench"]),
                prompts=Path(inputs["prompts"]), eval_prompts=Path(inputs["eval_prompts"]),
            ))  # fmt: skip
            dataset = curate_dataset.python_func(
                source=p["dataset_source"], n_items=preset.curation_items, seed=0, dataset=art(Dataset, "dataset"),
                summary=art(Markdown, "summary"), rubrics="",
                **{k: v for k, v in p.items() if k.startswith("curation_")},
            )  # fmt: skip
        critic = train_critic.python_func(
            recipe=p["critic_recipe"], overrides=p["critic_overrides"], dataset_uri=dataset,
            base_model=p["base_model"], run_id=run_id, pool=p["train_pool"], nodes=p["train_nodes"],
            nproc_per_node=p["train_nproc_per_node"], image="", backend="local", timeout_s=0.0, rubrics="",
            model=art(Model, "model"), metrics=art(Metrics, "sft-metrics"),
        )  # fmt: skip
        bench_critic.python_func(
            critic=critic, bench=p["bench"], n_items=p["bench_items"], max_new_tokens=p["bench_max_new_tokens"],
            batch_size=p["bench_batch_size"], rubrics="", run_id=run_id, report=art(HTML, "report"),
            metrics=art(Metrics, "bench-metrics"), summary=art(Markdown, "bench-summary"),
        )  # fmt: skip
        repo = export_to_triton.python_func(
            critic_uri=critic, task=task, device="cpu", max_new_tokens=p["export_max_new_tokens"], rubrics="",
            run_id=run_id, repository=art(Model, "repository"), gen_quality=p["export_gen_quality"],
        )  # fmt: skip
        try:
            url = deploy_reward_service.python_func(
                repository_uri=repo, backend="local", model=task, run_id=run_id
            )
            lora = rl_train.python_func(
                recipe=p["rl_recipe"], overrides=p["rl_overrides"], reward_url=url, run_id=run_id, pool="cpu",
                nodes=1, nproc_per_node=1, image="", backend="local", timeout_s=0.0, lora=art(Model, "lora"),
                metrics=art(Metrics, "rl-metrics"), curves=art(HTML, "curves"),
            )  # fmt: skip
            eval_policy.python_func(
                recipe=p["rl_recipe"], overrides=p["rl_overrides"], lora_uri=lora, reward_url=url,
                n_prompts=p["eval_prompts"], metrics=art(Metrics, "eval-metrics"), samples=art(HTML, "samples"),
            )  # fmt: skip
        finally:
            stop_reward_service.python_func(backend="local", run_id=run_id)
    return time.perf_counter() - t0


def _side(side: str, size: str, task: str) -> float:
    with tempfile.TemporaryDirectory(prefix=f"firm-qs-{side}-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIRM_")}
        env |= {"FIRM_HOME": str(Path(tmp) / "home"), "OMP_NUM_THREADS": "1"}
        if side == "pipeline":
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "firm.cli.main", "quickstart", "--workdir", str(Path(tmp) / "qs"), "--size", size,
                 "--task", task],
                env=env, cwd=tmp, check=True, capture_output=True, text=True,
            )  # fmt: skip
            return time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--direct-child", str(Path(tmp) / "qs"), "--size", size, "--task", task],
            env=env, cwd=tmp, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--task", default="edit", choices=["edit", "gen", "both"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--direct-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.direct_child:
        _direct(args.direct_child, args.size, ["edit", "gen"] if args.task == "both" else [args.task])
        return
    rows = []
    for r in range(args.repeats):
        sides = ("direct", "pipeline") if r % 2 == 0 else ("pipeline", "direct")
        row = {side: _side(side, args.size, args.task) for side in sides}
        row["ratio"] = row["pipeline"] / row["direct"]
        print(json.dumps({"repeat": r, **row}), flush=True)
        rows.append(row)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "n/a"
    lines = [
        f"Quickstart (`--size {args.size} --task {args.task}`) on {os.cpu_count()} CPU cores, 1-minute load average {load} "
        "after the run; seconds, each side in a fresh interpreter and FIRM_HOME.",
        "",
        "| repeat | direct (component functions in one process) | pipeline (`firmctl quickstart`, KFP local runner) "
        "| ratio |",
        "|---|---|---|---|",
        *[
            f"| {i} | {r['direct']:.1f} | {r['pipeline']:.1f} | {r['ratio']:.3f} |"
            for i, r in enumerate(rows)
        ],
        f"| median | | {statistics.median(r['pipeline'] for r in rows):.1f} | "
        f"**{statistics.median(r['ratio'] for r in rows):.3f}** (target ≤ 1.15) |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = (
            f".venv/bin/python benchmarks/quickstart.py --size {args.size} --task {args.task} "
            f"--repeats {args.repeats} --out {args.out}"
        )
        args.out.write_text(f"Command: `{cmd}`\n\n{text}\n")


if __name__ == "__main__":
    main()
