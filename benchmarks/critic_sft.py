"""Critic SFT throughput: samples/s for 1 vs 2 processes (torchrun, gloo) and full vs LoRA, tiny and small critics;
DDP vs DeepSpeed ZeRO-2 vs ZeRO-3; and the 8B-size run on a GPU node.

    .venv/bin/python benchmarks/critic_sft.py [--steps 30] [--sizes tiny,small] [--out DIR]
    .venv/bin/python benchmarks/critic_sft.py --strategies ddp,zero2,zero3 --sizes tiny,small --steps 15
    python benchmarks/critic_sft.py --config-size 8b [--nproc 8] [--steps 20]     # GPU node only

`--config-size 8b` builds the real Qwen3-VL-8B architecture (`--arch-config` = its config.json, or the published
dimensions written below) with random bf16 weights, a synthetic edit dataset at the paper's pixel budget, and runs
the paper recipe `critic/qwen3vl_8b_edit_full` (DeepSpeed ZeRO-3, activation checkpointing, token-budget
micro-batches of `--max-tokens-per-batch` padded tokens, default the recipe's; 0 = fixed micro-batches of
`batch.per_device` rows) under torchrun on the node's GPUs; it reports tokens/s, samples/s, micro-batches per step
and the peak GPU memory the trainer logs. Without a GPU it prints the commands to run and exits 0.

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
    model: Path,
    dataset: Path,
    work: Path,
    name: str,
    nproc: int,
    finetune: str,
    steps: int,
    strategy: str = "ddp",
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
        "dist": {"strategy": "ddp"}
        if strategy == "ddp"
        else {"strategy": "deepspeed", "zero_stage": int(strategy.removeprefix("zero"))},
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


# Qwen/Qwen3-VL-8B-Instruct's published dimensions (pass --arch-config with its config.json to use the file itself).
QWEN3_VL_8B = {
    "model_type": "qwen3_vl",
    "text_config": {
        "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 262144,
        "rope_theta": 5000000, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 4096, "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24], "hidden_act": "gelu_pytorch_tanh",
    },
}  # fmt: skip


def gpu_8b(a: argparse.Namespace) -> None:
    """The 8B-size run (see the module docstring); prints the command and returns where there is no GPU."""
    import torch

    from firm.critic.sft_config import load_sft_config

    recipe = "critic/qwen3vl_8b_edit_full"
    budget = a.max_tokens_per_batch
    if budget is None:
        budget = load_sft_config(recipe).batch.max_tokens_per_batch or 0
    packing = (
        ["batch.packing=token_budget", f"batch.max_tokens_per_batch={budget}"]
        if budget
        else ["batch.packing=none", "batch.max_tokens_per_batch=null"]
    )
    cmd = (
        f"python benchmarks/critic_sft.py --config-size 8b --nproc {a.nproc} --steps {a.steps} "
        f"--max-tokens-per-batch {budget}"
    )
    trainer = f"torchrun --nproc_per_node {a.nproc} -m firm.critic.sft --config {recipe} {' '.join(packing)}"
    if not torch.cuda.is_available():
        print(
            f"no GPU here: the 8B-size benchmark needs a GPU node. On one, run:\n  {cmd}\n"
            f"which trains (with its synthetic data, random 8B weights and {a.steps} steps):\n  {trainer} ..."
        )
        return
    from transformers import AutoConfig, AutoModelForImageTextToText

    from firm.curation.synthetic_sft import write_synthetic_sft_dataset
    from firm.models.tiny import build_tiny_critic

    work = Path(a.out or tempfile.mkdtemp(prefix="firm-bench-sft-8b-"))
    model_dir, dataset = work / "critic-8b", work / "data"
    if not dataset.exists():
        n = a.nproc * 10 * 2 * (a.steps + 1)  # the recipe's per-device 10 x grad-accum 2, one spare step
        write_synthetic_sft_dataset(
            dataset, n_edit=n, axes=["execution"], requested=4, val_fraction=0.01, size=896
        )
    if not model_dir.exists():
        tiny = build_tiny_critic(work / "critic-tiny", size="tiny")  # its tokenizer + processor, reused
        arch = json.loads(Path(a.arch_config).read_text()) if a.arch_config else QWEN3_VL_8B
        config = AutoConfig.for_model(**arch)
        with torch.device("cuda"):
            model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(model_dir)
        del model
        for (
            f
        ) in tiny.iterdir():  # processor / tokenizer files (the random 8B model has no trained vocabulary)
            if not f.name.startswith(("model", "config")) and f.is_file():
                (model_dir / f.name).write_bytes(f.read_bytes())
        proc_cfg = json.loads((model_dir / "processor_config.json").read_text())
        vision = arch["vision_config"]
        proc_cfg["image_processor"].update(  # the 8B vision tower's patching, the recipe's pixel budget
            patch_size=vision["patch_size"], merge_size=vision["spatial_merge_size"],
            size={"shortest_edge": 56 * 56, "longest_edge": 1003520},
        )  # fmt: skip
        (model_dir / "processor_config.json").write_text(json.dumps(proc_cfg, indent=2))
        torch.cuda.empty_cache()
    run = "bench-8b"
    over = [f"model.path={model_dir}", f"data.dataset={dataset}", f"max_steps={a.steps}", f"run_name={run}",
            f"output_dir={work / 'runs'}", f"checkpoint.uri={(work / 'ckpt').as_uri()}", "export.enabled=false",
            "eval.max_samples=1", "eval.generate=false", "log_every=1", *packing]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print(f"running: {trainer} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(a.nproc), "-m", "firm.critic.sft",
         "--config", recipe, *over], env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"8b run failed:\n{proc.stderr[-3000:]}")
    rows = [m for m in map(json.loads, (work / "runs" / run / "metrics.jsonl").read_text().splitlines())
            if "train/tokens_per_s" in m and m["step"] > 3]  # fmt: skip
    med = {k: statistics.median(m[k] for m in rows) for k in ("train/tokens_per_s", "train/samples_per_s")}
    peak = max(m.get("train/peak_mem_gib", float("nan")) for m in rows)
    micro = statistics.median(m.get("train/micro_batches", 2) for m in rows)  # unpacked: grad_accum 2
    batching = f"≤ {budget} tokens" if budget else "10 rows"
    print(
        "| model | GPUs | strategy | micro-batch | micro-batches/step | tokens/s | samples/s | peak GPU mem (rank 0) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(f"| Qwen3-VL-8B size, random bf16 | {a.nproc} | ZeRO-3 + activation ckpt | {batching} | {micro:g} | "
          f"{med['train/tokens_per_s']:.0f} | {med['train/samples_per_s']:.2f} | {peak:.1f} GiB |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--sizes", default="tiny,small")
    p.add_argument(
        "--strategies", default=None, help="ddp,zero2,zero3: compare at 2 processes, full fine-tune"
    )
    p.add_argument(
        "--config-size", choices=["8b"], default=None, help="the 8B-size GPU run (module docstring)"
    )
    p.add_argument("--nproc", type=int, default=8, help="GPUs for --config-size 8b")
    p.add_argument("--arch-config", default=None, help="config.json of the real model for --config-size 8b")
    p.add_argument(
        "--max-tokens-per-batch",
        type=int,
        default=None,
        help="--config-size 8b: token budget per micro-batch (default: the recipe's; 0 = unpacked, 10 rows)",
    )
    p.add_argument("--out", default=None, help="work directory (default: a temp dir)")
    a = p.parse_args()
    if a.config_size:
        gpu_8b(a)
        return
    from firm.curation.synthetic_sft import write_synthetic_sft_dataset
    from firm.models.tiny import build_tiny_critic

    work = Path(a.out or tempfile.mkdtemp(prefix="firm-bench-sft-"))
    dataset = work / "data"
    if not dataset.exists():
        write_synthetic_sft_dataset(dataset, n_edit=200, axes=["execution"], requested=4, val_fraction=0.05)
    if a.strategies:
        rows = []
        for size in a.sizes.split(","):
            model = work / f"critic-{size}"
            if not model.exists():
                build_tiny_critic(model, size=size)  # type: ignore[arg-type]
            base = None
            for strategy in a.strategies.split(","):
                rate = run_cell(model, dataset, work, f"{size}-2p-{strategy}", 2, "full", a.steps, strategy)
                base = base or rate
                rows.append((size, strategy, rate, rate / base))
                print(f"{size} 2p {strategy}: {rate:.1f} samples/s", file=sys.stderr, flush=True)
        print("| critic | strategy (2 processes, full) | samples/s | vs DDP |")
        print("|---|---|---|---|")
        for size, strategy, rate, ratio in rows:
            print(f"| {size} | {strategy} | {rate:.1f} | {ratio:.2f}× |")
        return
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
