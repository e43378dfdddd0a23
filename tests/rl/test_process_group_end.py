"""A 2-rank RL run ends its process group, gloo's backend threads included, before its ranks exit (see
tests/sft/test_process_group_end.py; here diffusers' and transformers' imports came after `init_process_group`, and
the trainer held the group until its frame was gone)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests._threads_after_main import assert_no_backend_threads, run_ranks


def test_a_two_rank_run_leaves_no_backend_thread_behind(tiny_cfg, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(as_dict=True, steps=1)))
    proc, ranks = run_ranks("firm.rl.train", ["--config", str(config)], tmp_path / "threads")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_no_backend_threads(ranks, 2)
