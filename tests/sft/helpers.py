"""Helpers shared by the critic SFT tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sft_config(model: Path, dataset: Path | str, tmp: Path, **over: Any) -> dict[str, Any]:
    """A tiny-critic SFT config as a dict (1 CPU thread per process, checkpoints in a local store)."""
    cfg: dict[str, Any] = {
        "run_name": "t",
        "output_dir": str(tmp / "runs"),
        "seed": 42,
        "precision": "fp32",
        "threads": 1,
        "max_steps": 20,
        "log_every": 1,
        "model": {"path": str(model)},
        "data": {"dataset": str(dataset), "encode_cache_mb": 512},  # as the tiny_cpu recipe
        "batch": {"per_device": 8, "grad_accum": 1},
        "optim": {"lr": 2e-3, "scheduler": "constant", "warmup_ratio": 0.0, "max_grad_norm": None},
        "eval": {"every_n_steps": 0, "batch_size": 20, "max_new_tokens": 40},
        "checkpoint": {"uri": (tmp / "store" / "ckpt").as_uri(), "every_n_steps": 0, "keep_last": 2},
    }
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def write_config(cfg: dict[str, Any], path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """Step → train loss (the last record wins, so a resumed run's steps replace the killed run's)."""
    return {m["step"]: m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m}


def packing_config(
    model: Path, dataset: Path | str, tmp: Path, budget: int | None, run_name: str, **over: Any
) -> Any:
    """A validated tiny-critic `SFTConfig` with token-budget micro-batches of `budget` tokens (None: unpacked),
    global batch 8, checkpoints every 2 steps, a 1-row val loss instead of generation, no export."""
    from firm.critic.sft_config import SFTConfig

    batch: dict[str, Any] = {"per_device": 8, "grad_accum": 1}
    if budget is not None:
        batch.update(packing="token_budget", max_tokens_per_batch=budget)
    cfg = sft_config(
        model, dataset, tmp, run_name=run_name, batch=batch, eval__generate=False, eval__max_samples=1,
        export__enabled=False, checkpoint__every_n_steps=2, **over,
    )  # fmt: skip
    return SFTConfig.model_validate(cfg)
