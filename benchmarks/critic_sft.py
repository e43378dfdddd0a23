"""Critic SFT throughput: samples/s for 1 vs 2 processes (torchrun, gloo) and full vs LoRA, tiny and small critics.

    .venv/bin/python benchmarks/critic_sft.py [--steps 30] [--sizes tiny,small] [--out DIR]

Each cell is a real `python -m firm.critic.sft` run (under torchrun for 2 processes) on a synthetic edit dataset
(64×64 images, batch 8 = per-device 8 × 1 process or 4 × 2 processes, 1 CPU thread per process). Throughput is the
median of the per-step `train/samples_per_s` the trainer logs, after 3 warm-up steps (startup, eval, checkpoint and
export are excluded). Prints a Markdown table with ratios to the 1-process full fine-tune of the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_cell(
    model: Path, dataset: Path, work: Path, name: str, nproc: int, finetune: str, steps: int
) -> float:
    cfg = {
        "run_name": name,
        "output_dir": str(work / "runs"),
        "precision": "fp32",
        "threads": 1,
        "max_steps": steps,
        "finetune": finetune,
        "model": {"path": str(model)},
        "data": {"dataset": str(dataset)},
        "batch": {"per_device": 8 // nproc, "grad_accum": 1, "global_size": 8},
        "optim": {"lr": 1e-4, "scheduler": "constant", "warmup_ratio": 0.0},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "eval": {"generate": False, "max_samples": 1},
        "checkpoint": {"uri": (work / "ckpt" / name).as_uri()},
        "export": {"enabled": False},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(29600 + hash(name) % 300), "-m", "firm.critic.sft", "--config", str(path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rates = [
        m["train/samples_per_s"]
        for m in map(json.loads, (work / "runs" / name / "metrics.jsonl").read_text().splitlines())
        if "train/samples_per_s" in m and m["step"] > 3
    ]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--sizes", default="tiny,small")
    p.add_argument("--out", default=None, help="work directory (default: a temp dir)")
    a = p.parse_args()
    from firm.curation.synthetic_sft import write_synthetic_sft_dataset
    from firm.models.tiny import build_tiny_critic

    work = Path(a.out or tempfile.mkdtemp(prefix="firm-bench-sft-"))
    dataset = work / "data"
    if not dataset.exists():
        write_synthetic_sft_dataset(dataset, n_edit=200, axes=["execution"], requested=4, val_fraction=0.05)
    rows = []
    for size in a.sizes.split(","):
        model = work / f"critic-{size}"
        if not model.exists():
            build_tiny_critic(model, size=size)  # type: ignore[arg-type]
        base = None
        for nproc in (1, 2):
            for finetune in ("full", "lora"):
                rate = run_cell(model, dataset, work, f"{size}-{nproc}p-{finetune}", nproc, finetune, a.steps)
                base = base or rate
                rows.append((size, nproc, finetune, rate, rate / base))
                print(f"{size} {nproc}p {finetune}: {rate:.1f} samples/s", file=sys.stderr, flush=True)
    print("| critic | processes | fine-tune | samples/s | vs 1-process full |")
    print("|---|---|---|---|---|")
    for size, nproc, finetune, rate, ratio in rows:
        print(f"| {size} | {nproc} | {finetune} | {rate:.1f} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
