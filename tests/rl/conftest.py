"""Fixtures for the RL tests: one tiny SD3 policy per session, prompt files and a tiny-run config factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # the tiny models are far too small for intra-op parallelism; on a shared 2-core machine it only costs
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from firm.rl.policies.tiny import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3") / "pipe", sample_size=4)


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    from firm.rl.policies.tiny import write_prompts

    return write_prompts(tmp_path / "prompts.txt")


@pytest.fixture
def tiny_cfg(tiny_sd3: Path, prompts_file: Path, tmp_path: Path) -> Callable[..., Any]:
    """`tiny_cfg(**overrides)` → a validated RLConfig dict for a 32 px tiny SD3 run (dotted keys allowed)."""
    from firm.rl.config import apply_overrides, config_from_dict

    def make(algorithm: str = "nft", as_dict: bool = False, **overrides: Any) -> Any:
        data: dict[str, Any] = {
            "name": "test",
            "task": "gen",
            "algorithm": algorithm,
            "output_uri": str(tmp_path / "out"),
            "steps": 3,
            "seed": 0,
            "device": "cpu",
            "policy": {"kind": "sd3", "uri": str(tiny_sd3), "resolution": 32, "max_sequence_length": 16},
            "lora": {"rank": 4, "alpha": 8},
            "sampling": {"num_steps": 4, "group_size": 4, "prompts_per_step": 2, "eval_num_steps": 4},
            "optim": {"lr": 3e-3},
            "reward": {"kind": "brightness", "async_overlap": False, "retries": 0, "retry_backoff_s": 0},
            "data": {"prompts": str(prompts_file)},
            "checkpoint": {"every_steps": 1000},
            "monitor": {"tensorboard": False},
        }
        apply_overrides(data, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])
        return data if as_dict else config_from_dict(data)

    return make


def tensorboard_tags(run_dir: Path) -> tuple[set[str], set[str]]:
    """(scalar tags, image tags) written to the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags["scalars"]), set(tags["images"])
