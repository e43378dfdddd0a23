"""Critic SFT ends only the process group it created (`firm.processes.end_process_group`).

That a 2-rank run ends its group, gloo's backend threads included, before its ranks exit is checked on the runs
other tests make anyway: DDP in tests/sft/test_train.py (the 2-process CLI run), DeepSpeed in
tests/sft/test_deepspeed_resume.py, RL in tests/rl/test_distributed_cli.py (tests/_threads_after_main.py records each
rank's threads at exit). Two things kept a group alive until interpreter exit, where its threads are torn down in no
set order: modules that bind the live default group as a default argument when imported after
`init_process_group` (transformers' model loading imports them), and the DDP reducer, which the run's frame held
when the group was destroyed."""

from __future__ import annotations

from pathlib import Path

from tests.sft.helpers import sft_config


def test_a_process_group_the_caller_made_outlives_the_run(
    tiny_critic_dir: Path, sft_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    """`train` ends only a group it created: called in-process inside a caller's group (here a 1-process gloo group
    and DeepSpeed ZeRO-2, which joins an existing group), the caller's group is still there afterwards."""
    import torch.distributed as dist

    from firm.critic.sft import train
    from firm.critic.sft_config import SFTConfig
    from firm.processes import end_process_group, free_port

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo")
    try:
        cfg = sft_config(
            tiny_critic_dir, sft_dataset, tmp_path, run_name="inside", max_steps=1, eval__generate=False,
            eval__max_samples=1, export__enabled=False, dist={"strategy": "deepspeed", "zero_stage": 2},
        )  # fmt: skip
        assert train(SFTConfig.model_validate(cfg)).steps == 1
        assert dist.is_initialized()
    finally:
        end_process_group()
    assert not dist.is_initialized()
