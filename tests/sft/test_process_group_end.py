"""A 2-rank critic SFT run under DDP ends its process group, gloo's backend threads included, before its ranks exit.

Two things kept it alive until interpreter exit, where its threads are torn down in no set order: modules that bind
the live default group as a default argument when imported after `init_process_group` (transformers' model loading
imports them), and the DDP reducer, which the run's frame held when the group was destroyed
(`firm.processes.before_process_group` / `end_process_group`). On the code before, each rank still ran gloo's
threads after `main` returned. The DeepSpeed runs are checked the same way in tests/sft/test_deepspeed_resume.py."""

from __future__ import annotations

from pathlib import Path

from tests._threads_after_main import assert_no_backend_threads, run_ranks
from tests.sft.helpers import sft_config, write_config


def test_a_ddp_run_leaves_no_backend_thread_behind(
    tiny_critic_dir: Path, sft_dataset: Path, tmp_path: Path
) -> None:
    cfg = sft_config(
        tiny_critic_dir, sft_dataset, tmp_path, run_name="ddp", max_steps=2, batch__per_device=4,
        batch__global_size=8, eval__generate=False, eval__max_samples=1, export__enabled=False,
    )  # fmt: skip
    config = write_config(cfg, tmp_path / "c.yaml")
    proc, ranks = run_ranks("firm.critic.sft", ["--config", str(config)], tmp_path / "threads")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_no_backend_threads(ranks, 2)
