"""Orchestration overhead of the KFP local runner: the `critic` pipeline vs the same stages called from Python.

    .venv/bin/python benchmarks/pipeline_overhead.py [--repeats 2] [--steps 40]

Both sides do the same work with the same sizes on tiny models, one after the other, each in a fresh interpreter (so
both pay Python start-up and imports) and a fresh FIRM_HOME: curate (the synthetic SFT dataset, 200 items) → critic SFT as a 2-process local job
(`firm.launch.runner.run_job`, `--steps` steps) → FIRM-Bench (20 synthetic items) → export to a Triton repository.
"direct" calls the `firm` functions the components call; "pipeline" runs `pipelines.api.run_local("critic", ...)`
(the KFP local runner: one subprocess per step, executor I/O, artifacts). Prints one JSON line per repeat and a
summary with the median ratio pipeline / direct.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def direct(critic: Path, steps: int) -> float:
    from firm.bench.backends import make_backend
    from firm.bench.loaders import load_bench
    from firm.bench.runner import run_bench
    from firm.bench.synthetic import publish_synthetic_bench
    from firm.config import get_settings
    from firm.curation.prepare import prepare_sft_dataset
    from firm.launch.runner import run_job
    from firm.launch.spec import JobSpec
    from firm.serving.export import ExportConfig, export_repository
    from firm.storage import publish_dir

    t0 = time.perf_counter()
    dataset, _ = prepare_sft_dataset("synthetic", n_items=200)
    spec = JobSpec(
        name="bench-direct", entrypoint="sft", recipe="critic/tiny_cpu", pool="cpu", nodes=1, nproc_per_node=2,
        overrides=[f"max_steps={steps}", "batch.per_device=4", "eval.every_n_steps=0", "checkpoint.every_n_steps=20",
                   f"data.dataset={dataset}", f"model.path={critic}"],
    )  # fmt: skip
    run = run_job(spec, "local", on_line=lambda _line: None, poll=1.0)
    model = f"{run.job.checkpoint_uri}/export"
    with tempfile.TemporaryDirectory() as tmp:
        result = run_bench(
            make_backend(model, max_new_tokens=48, batch_size=20), load_bench(publish_synthetic_bench(20)), tmp,
            batch_size=20, progress=False,
        )  # fmt: skip
        publish_dir(tmp, f"{get_settings().bucket_uris()['models']}/direct/bench-report")
    assert result.report.flat_metrics()
    cfg = ExportConfig(critic=model, task="edit", device="cpu", max_new_tokens=48)
    export_repository(cfg, f"{get_settings().bucket_uris()['models']}/direct/triton-edit", overwrite=True)
    return time.perf_counter() - t0


def pipeline(critic: Path, steps: int) -> float:
    import contextlib

    from pipelines.api import run_local

    params = [
        "dataset_items=200", "critic_recipe=critic/tiny_cpu", f"base_model={critic}",
        f"critic_overrides=[max_steps={steps}, batch.per_device=4, eval.every_n_steps=0, checkpoint.every_n_steps=20]",
        "train_pool=cpu", "train_nproc_per_node=2", "bench_items=20", "bench_max_new_tokens=48",
        "bench_batch_size=20", "export_device=cpu", "export_max_new_tokens=48",
    ]  # fmt: skip
    t0 = time.perf_counter()
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        run_local("critic", params)
    return time.perf_counter() - t0


def _side(side: str, critic: Path, steps: int, home: Path) -> float:
    """Wall time of one side in a fresh interpreter (`--side` below), start-up and imports included."""
    import subprocess

    env = {**os.environ, "FIRM_HOME": str(home), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--side", side, "--critic", str(critic), "--steps", str(steps)],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--side", choices=["direct", "pipeline"], help=argparse.SUPPRESS)
    ap.add_argument("--critic", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:  # one side, in this (fresh) interpreter
        (direct if args.side == "direct" else pipeline)(args.critic, args.steps)
        return 0
    from firm.models.tiny import build_tiny_critic

    root = Path(tempfile.mkdtemp(prefix="firm-pipeline-overhead-"))
    critic = build_tiny_critic(root / "tiny-critic", size="tiny", seed=0)
    os.chdir(root)
    ratios, rows = [], []
    for i in range(args.repeats):
        d = _side("direct", critic, args.steps, root / f"direct-{i}")
        p = _side("pipeline", critic, args.steps, root / f"pipeline-{i}")
        rows.append(
            {"repeat": i, "direct_s": round(d, 2), "pipeline_s": round(p, 2), "ratio": round(p / d, 3)}
        )
        ratios.append(p / d)
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"median_ratio": round(statistics.median(ratios), 3), "repeats": args.repeats,
                      "steps": args.steps, "cpus": os.cpu_count()}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
