"""An RL run whose rewards come from the tiny FIRM critic served by the real tritonserver, through gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_nft_run_with_tiny_critic_behind_triton(tiny_cfg, formatted_critic_dir: Path, tmp_path: Path) -> None:
    from firm.rl.trainer import Trainer
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository
    from firm.serving.server import TritonServer

    repo = export_repository(
        ExportConfig(
            critic=str(formatted_critic_dir),
            task="gen",
            max_new_tokens=40,
            max_pixels=64 * 64,
            batching=BatchingConfig(max_batch_size=8, preferred_batch_sizes=[4, 8], max_queue_delay_us=5_000),
        ),
        tmp_path / "repo",
    )
    with TritonServer(repo) as srv:
        cfg = tiny_cfg(steps=2, reward__kind="triton", reward__url=srv.grpc_url, reward__async_overlap=True)
        trainer = Trainer(cfg)
        results = trainer.train(progress=False)
        served = sum(trainer.reward.client.stats().values())  # type: ignore[attr-defined]
        trainer.reward.close()  # type: ignore[attr-defined]
    assert len(results) == 2 and served > 0
    for r in results:
        m = r.metrics
        scored = m["reward/n"]
        assert (
            scored + round(m["reward/parse_failure_rate"] * 8) == 8
        )  # every rollout scored or dropped, none faked
        assert scored > 0 and 0.0 <= m["reward/mean"] <= 1.0
        assert 0.0 <= m["reward/instruction"] <= 1.0 and "reward/quality" in m  # QMA's sub-scores are logged
        assert 0.0 <= m["reward/truncated_rate"] <= m["reward/parse_failure_rate"]
    # the pack the served critic asks with is recorded with the run
    from firm.rewards.packs import load_pack

    state = json.loads(next(Path(cfg.output_uri).rglob("state.json")).read_text())
    assert state["rubrics"] == load_pack().ref


def test_edit_run_with_in_process_critic(formatted_critic_dir: Path, tmp_path: Path) -> None:
    """CME rewards from a critic in this process on the editing loop (execution + consistency sub-scores logged)."""
    from firm.rewards.packs import load_pack, save_pack
    from firm.rl.config import config_from_dict
    from firm.rl.policies.tiny import build_tiny_qwen_edit, write_edit_prompts
    from firm.rl.trainer import Trainer

    policy = build_tiny_qwen_edit(tmp_path / "qwen")
    pack = load_pack().model_copy(update={"name": "rl-test"})
    pack_file = save_pack(pack, tmp_path / "rl-test.yaml")
    cfg = config_from_dict(
        {
            "task": "edit",
            "output_uri": str(tmp_path / "out"),
            "steps": 1,
            "device": "cpu",
            "policy": {
                "kind": "qwen_edit",
                "uri": str(policy),
                "resolution": 32,
                "max_sequence_length": 96,
                "condition_pixels": 56 * 56,
                "prompt_template_drop": 0,
            },
            "lora": {"rank": 4, "alpha": 8},
            "sampling": {"num_steps": 2, "group_size": 2, "prompts_per_step": 1},
            "reward": {
                "kind": "critic",
                "critic_uri": str(formatted_critic_dir),
                "async_overlap": False,
                "rubrics": str(pack_file),
                "options": {"max_new_tokens": 40, "max_pixels": 64 * 64},
            },
            "data": {"prompts": str(write_edit_prompts(tmp_path / "edits/prompts.jsonl"))},
            "monitor": {"tensorboard": False},
        }
    )
    trainer = Trainer(cfg)
    assert trainer.reward.rubrics == pack.ref  # type: ignore[attr-defined]  # reward.rubrics reaches the critic
    (res,) = trainer.train(progress=False)
    m = res.metrics
    assert m["reward/n"] + round(m["reward/parse_failure_rate"] * 2) == 2
    assert m["reward/n"] >= 1  # the format-taught critic's answers parse
    assert 0.0 <= m["reward/execution"] <= 1.0 and 0.0 <= m["reward/consistency"] <= 1.0


def test_reward_rubrics_only_for_an_in_process_critic() -> None:
    from firm.errors import ConfigError
    from firm.rl.config import RewardConfig
    from firm.rl.rewards import build_reward

    with pytest.raises(ConfigError, match=r"reward\.rubrics applies to reward\.kind=critic"):
        build_reward(RewardConfig(kind="triton", url="127.0.0.1:1", rubrics="firm-v1"), "gen")
