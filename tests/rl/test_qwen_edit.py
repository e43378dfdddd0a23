"""The editing loop on a tiny Qwen-Image-Edit-Plus policy: NFT raises a cheap known reward (brightness of the edited
image) through the reward interface; edit metrics are reported; the exported LoRA loads with load_lora_weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.rl.conftest import tensorboard_tags


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from firm.rl.policies.tiny import build_tiny_qwen_edit

    return build_tiny_qwen_edit(tmp_path_factory.mktemp("tiny-qwen") / "pipe")


def test_qwen_edit_nft_learns_and_lora_exports(tiny_qwen: Path, tmp_path: Path) -> None:
    from firm.rl import lora
    from firm.rl.config import config_from_dict
    from firm.rl.policies.qwen_edit import QwenEditPolicy
    from firm.rl.policies.tiny import write_edit_prompts
    from firm.rl.trainer import Trainer

    prompts = write_edit_prompts(tmp_path / "edits/prompts.jsonl")
    cfg = config_from_dict(
        {
            "task": "edit",
            "output_uri": str(tmp_path / "out"),
            "steps": 16,
            "device": "cpu",
            "policy": {
                "kind": "qwen_edit",
                "uri": str(tiny_qwen),
                "resolution": 32,
                "max_sequence_length": 96,
                "condition_pixels": 56 * 56,
                "prompt_template_drop": 0,
            },
            "lora": {"rank": 4, "alpha": 8},
            "sampling": {"num_steps": 4, "group_size": 4, "prompts_per_step": 2, "eval_num_steps": 2},
            "optim": {"lr": 1e-2},
            "reward": {"kind": "brightness", "async_overlap": True},
            "data": {"prompts": str(prompts)},
            "checkpoint": {"every_steps": 1000},
            "monitor": {"tensorboard": True, "eval_every": 16},
        }
    )
    trainer = Trainer(cfg)
    results = trainer.train(progress=False)
    rewards = [r.metrics["reward/mean"] for r in results]
    assert len(rewards) == 16 and sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.02, rewards
    m = results[-1].metrics
    assert m["reward/n"] == 8 and 0.0 <= m["hacking/source_similarity"] <= 1.0
    assert m["hacking/identity_copy_flag"] == 0.0
    # editing eval grids need no eval_prompts: the first prompt-file items (with their sources) are the fixed set
    grid = Image.open(tmp_path / "out/run/samples/step-00000016.png")
    assert grid.size == (4 * 32, 32)
    scalars, images = tensorboard_tags(tmp_path / "out/run")
    assert {"hacking/source_similarity", "hacking/identity_copy_flag", "reward/mean"} <= scalars
    assert "eval/samples" in images
    trained = lora.trainable_params(trainer.policy.transformer)
    assert any(
        float(p.detach().abs().max()) > 0
        for n, p in trainer.policy.transformer.named_parameters()
        if "lora_B.default" in n
    )

    # the exported LoRA loads into a fresh pipeline with diffusers' load_lora_weights and reproduces the policy
    pipe = QwenEditPolicy.load_pipeline(str(tiny_qwen), torch.float32)
    pipe.load_lora_weights(str(tmp_path / "out/final/lora"))
    pol = trainer.policy
    cond = pol.encode(
        ["make the sky red"], [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))]
    )
    x = pol.initial_noise(1, torch.Generator().manual_seed(1), cond)
    s = torch.tensor([0.5])
    with torch.no_grad(), trainer.ema_applied():  # the exported LoRA is the parameter EMA
        ours = pol.velocity(x, s, cond)
    with torch.no_grad():
        pol.transformer, saved = pipe.transformer, pol.transformer
        theirs = pol.velocity(x, s, cond)
        pol.transformer = saved
    assert torch.allclose(ours, theirs, atol=1e-5) and len(trained) > 0


def test_edit_prompts_without_source_are_rejected(tmp_path: Path) -> None:
    from firm.errors import InputError
    from firm.rl.data import load_prompts

    p = tmp_path / "prompts.jsonl"
    p.write_text('{"instruction": "make it red"}\n')
    with pytest.raises(InputError, match=r"prompts.jsonl:1: editing prompts need a source 'image'"):
        load_prompts(str(p), "edit")


def test_cli_sample_edits_a_source_image(tiny_qwen: Path, tmp_path: Path) -> None:
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from firm.cli.main import app

    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "src.png")
    args = ["rl", "sample", "--policy", str(tiny_qwen), "--prompt", "make it blue"]
    args += [
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "3",
        "--resolution",
        "32",
        "--max-sequence-length",
        "96",
    ]
    # the contract has no --kind: --image means an editing policy
    res = CliRunner().invoke(app, [*args, "--condition-pixels", "3136", "--image", str(tmp_path / "src.png")])
    assert res.exit_code == 0, res.output
    (path,) = json.loads(res.stdout.strip().splitlines()[-1])["images"]
    assert Image.open(path).size == (32, 32)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["sample-000.png"]  # no temp files left
    res = CliRunner().invoke(app, [*args, "--kind", "qwen_edit"])  # no --image
    assert res.exit_code == 1 and "error: editing policies need --image" in res.output
    res = CliRunner().invoke(app, [*args, "--kind", "sd3", "--image", str(tmp_path / "src.png")])
    assert res.exit_code == 1 and "error: --image is for editing policies" in res.output
    res = CliRunner().invoke(app, [*args, "--image", str(tmp_path / "missing.png")])
    assert res.exit_code == 1 and "missing.png" in res.output


def test_sample_policy_config_keeps_the_editing_pixel_budget() -> None:
    from firm.rl.sample import policy_config

    cfg = policy_config("qwen_edit", "runs/x", 32, 96, 3136)
    assert cfg.condition_pixels == 3136 and cfg.kind == "qwen_edit" and cfg.resolution == 32


def test_edit_config_rejects_eval_prompts(tmp_path: Path) -> None:
    from firm.errors import ConfigError
    from firm.rl.config import config_from_dict

    data = {
        "task": "edit",
        "output_uri": str(tmp_path / "out"),
        "policy": {"kind": "qwen_edit", "uri": "runs/tiny-qwen-edit"},
        "data": {"prompts": "p.jsonl", "eval_prompts": ["make it red"]},
    }
    with pytest.raises(ConfigError, match="eval_prompts is for generation"):
        config_from_dict(data)


def test_qwen_edit_grpo_runs_sde_rollouts_and_moves_off_the_reference(
    tiny_qwen: Path, tmp_path: Path
) -> None:
    """Flow-GRPO on the editing policy (packed latents + source-image tokens): SDE log-probs recomputed in the update,
    the LoRA moves so the KL to the reference (adapters disabled) becomes positive. A plumbing check: the tiny random
    VAE makes GRPO's brightness signal too weak to assert learning in a few steps (NFT's learning is tested above)."""
    import math

    from firm.rl.config import config_from_dict
    from firm.rl.policies.tiny import write_edit_prompts
    from firm.rl.trainer import Trainer

    cfg = config_from_dict(
        {
            "task": "edit",
            "algorithm": "grpo",
            "output_uri": str(tmp_path / "out"),
            "steps": 2,
            "device": "cpu",
            "policy": {
                "kind": "qwen_edit",
                "uri": str(tiny_qwen),
                "resolution": 32,
                "max_sequence_length": 96,
                "condition_pixels": 56 * 56,
                "prompt_template_drop": 0,
            },
            "lora": {"rank": 4, "alpha": 8},
            "sampling": {"num_steps": 3, "group_size": 4, "prompts_per_step": 1},
            "optim": {"lr": 1e-2},
            "reward": {"kind": "brightness", "async_overlap": True},
            "data": {"prompts": str(write_edit_prompts(tmp_path / "edits/prompts.jsonl"))},
            "checkpoint": {"every_steps": 1000},
            "monitor": {"tensorboard": False},
        }
    )
    results = Trainer(cfg).train(progress=False)
    first, second = (r.metrics for r in results)
    assert first["loss/kl"] == 0.0 and second["loss/kl"] > 0.0  # step 0 is the reference (LoRA B = 0)
    assert first["clip_frac"] == 0.0  # one update per rollout batch: the recomputed log-probs match sampling
    assert second["reward/n"] == 4 and all(math.isfinite(v) for v in second.values())


def test_qwen_edit_grpo_learns(tiny_qwen: Path, tmp_path: Path) -> None:
    """Flow-GRPO raises the brightness of the edited image on the tiny Qwen-Image-Edit policy with the default
    (Flow-GRPO) settings: CFG 4.5, in-order timesteps, one accumulated update per step (so every ratio is exactly 1
    and the clip range never bites), global-std advantages. Measured gains (last 4 − first 4 step means, 30 steps) for
    seeds 0–3: +0.20, +0.23, +0.21, +0.21; the first-4 means vary by ~±0.01 between seeds."""
    from firm.rl.config import config_from_dict
    from firm.rl.policies.tiny import write_edit_prompts
    from firm.rl.trainer import Trainer

    cfg = config_from_dict(
        {
            "task": "edit",
            "algorithm": "grpo",
            "output_uri": str(tmp_path / "out"),
            "steps": 30,
            "seed": 0,
            "device": "cpu",
            "policy": {
                "kind": "qwen_edit",
                "uri": str(tiny_qwen),
                "resolution": 32,
                "max_sequence_length": 96,
                "condition_pixels": 56 * 56,
                "prompt_template_drop": 0,
            },
            "lora": {"rank": 4, "alpha": 8},
            "sampling": {"num_steps": 3, "group_size": 4, "prompts_per_step": 4},
            "grpo": {"kl_coef": 0.0},
            "optim": {"lr": 2e-2},
            "reward": {"kind": "brightness", "async_overlap": True},
            "data": {"prompts": str(write_edit_prompts(tmp_path / "edits/prompts.jsonl"))},
            "checkpoint": {"every_steps": 1000},
            "monitor": {"tensorboard": False},
        }
    )
    results = Trainer(cfg).train(progress=False)
    rewards = [r.metrics["reward/mean"] for r in results]
    assert len(rewards) == 30
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.05, rewards
    assert all(r.metrics["reward/n"] == 16 for r in results)
