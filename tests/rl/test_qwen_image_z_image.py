"""Qwen-Image and Z-Image-Turbo policies on their tiny models: seeded rollouts of the right shapes, the NFT gradient
reaches only the LoRA (the official target modules), a cheap reward rises, the exported LoRA loads with the diffusers
pipeline's `load_lora_weights` and reproduces the trained velocities, an interrupted run resumed with
`firmctl rl train --resume auto` ends exactly where an uninterrupted one does, and bad input (a directory of the other
family, a guidance the family does not take) is one `error:` line naming the field."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from firm.rl.rewards import BrightnessReward, RewardItem
from firm.schemas import RewardBreakdown

KINDS = ["qwen_image", "z_image"]
PIPELINES = {"qwen_image": "QwenImagePipeline", "z_image": "ZImagePipeline"}
# the tiny BPE tokenizer splits Qwen-Image's system template into other pieces than the real one (34 tokens)
OPTIONS: dict[str, dict[str, Any]] = {"qwen_image": {"prompt_template_drop": "auto"}, "z_image": {}}
# the official trainers' LoRA targets, as module-name suffixes (FIRM-Reward nft_qwen_image.py / nft_zimage_turbo.py)
OFFICIAL_TARGETS = {
    "qwen_image": [
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "img_mlp.net.0.proj",
        "img_mlp.net.2",
        "txt_mlp.net.0.proj",
        "txt_mlp.net.2",
    ],
    "z_image": ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"],
}
STEPS, KILLED_AT, COMPARED_AT = 16, 4, 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from firm.rl.policies.tiny_qwen_image import build_tiny_qwen_image, build_tiny_z_image

    root = tmp_path_factory.mktemp("tiny-gen")
    return {
        "qwen_image": build_tiny_qwen_image(root / "qwen-image"),
        "z_image": build_tiny_z_image(root / "z-image"),
    }


def _data(kind: str, uri: Path, tmp_path: Path, out: str = "out", **top: Any) -> dict[str, Any]:
    from firm.rl.policies.tiny import write_prompts

    return {
        "name": f"test-{kind}",
        "task": "gen",
        "output_uri": str(tmp_path / out),
        "steps": STEPS,
        "device": "cpu",
        "policy": {
            "kind": kind,
            "uri": str(uri),
            "resolution": 32,
            "max_sequence_length": 32,
            "options": OPTIONS[kind],
        },
        "lora": {"rank": 4, "alpha": 8},
        "sampling": {"num_steps": 4, "group_size": 4, "prompts_per_step": 2, "eval_num_steps": 4},
        "optim": {"lr": 5e-2},
        "reward": {"kind": "brightness", "async_overlap": False, "retries": 0, "retry_backoff_s": 0},
        "data": {"prompts": str(write_prompts(tmp_path / "prompts.txt"))},
        "checkpoint": {"every_steps": 1},
        "monitor": {"tensorboard": False},
        **top,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_rollouts_are_seeded_and_the_nft_gradient_reaches_only_the_lora(
    kind: str, tiny: dict[str, Path], tmp_path: Path
) -> None:
    from firm.rl import lora
    from firm.rl.config import config_from_dict
    from firm.rl.losses import nft_loss
    from firm.rl.policies.loading import load_policy
    from firm.rl.sampling import ode_rollout

    cfg = config_from_dict(_data(kind, tiny[kind], tmp_path))
    pol = load_policy(cfg.policy, torch.device("cpu"))
    assert type(pol.pipeline).__name__ == PIPELINES[kind]
    t = pol.transformer
    linear = {n for n, m in t.named_modules() if isinstance(m, torch.nn.Linear)}
    official = {n for n in linear if any(n.endswith("." + s) for s in OFFICIAL_TARGETS[kind])}
    lora.add_lora(t, rank=4, alpha=8, init="gaussian", targets=lora.lora_targets(kind, None))
    # the registry's targets adapt exactly the modules the official trainer's names match
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in t.named_parameters() if ".lora_A.default." in n}
    assert adapted == official and len(adapted) >= 7

    cond = pol.encode(["a red apple on a table", "a dark street at night"]).repeat(2)
    if (
        kind == "qwen_image"
    ):  # the official true CFG (4.0) against the empty negative prompt lives in the policy
        assert {"neg_embeds", "neg_mask"} <= set(cond.tensors)

    def rollout(seed: int) -> torch.Tensor:
        noise = pol.initial_noise(4, torch.Generator().manual_seed(seed), cond)
        with torch.no_grad():
            return ode_rollout(pol.velocity, noise, sigmas, cond).final

    sigmas = pol.sigmas(4, cond)
    assert sigmas.shape == (5,) and sigmas[0] == pytest.approx(1.0, abs=0.02) and sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    x0 = rollout(0)
    shape = (4, 4, 64) if kind == "qwen_image" else (4, 16, 4, 4)  # packed 2×2 patches vs [C, h, w]
    assert x0.shape == shape and torch.equal(x0, rollout(0)) and not torch.allclose(x0, rollout(1))
    images = pol.decode(x0, cond)
    assert images.shape == (4, 3, 32, 32) and 0 <= float(images.min()) <= float(images.max()) <= 1

    # one NFT loss on the rollout: gradients only in the trainable LoRA (B starts at 0, so B's gradient is the signal)
    s = torch.tensor([0.9, 0.6, 0.4, 0.2])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    xt = (1 - s.view(-1, *[1] * (x0.ndim - 1))) * x0 + s.view(-1, *[1] * (x0.ndim - 1)) * eps
    with torch.no_grad(), lora.using(t, lora.OLD):
        v_old = pol.velocity(xt, s, cond)
    with torch.no_grad(), lora.using(t, None):
        v_ref = pol.velocity(xt, s, cond)
    loss = nft_loss(pol.velocity(xt, s, cond), v_old, v_ref, x0, eps, s, torch.tensor([1.0, 0.0, 0.7, 0.3]))
    loss.loss.backward()
    assert torch.isfinite(loss.loss)
    with_grad = {
        n
        for comp in pol.pipeline.components.values()
        if isinstance(comp, torch.nn.Module)
        for n, p in comp.named_parameters()
        if p.grad is not None
    }
    assert with_grad and all(".lora_" in n and ".default." in n for n in with_grad)
    assert any(float(p.grad.abs().max()) > 0 for n, p in t.named_parameters() if ".lora_B.default." in n)


class KilledAt:
    """Brightness, until the rollouts of step `step` are scored: then the run dies (as if the pod were killed)."""

    task = "gen"

    def __init__(self, step: int) -> None:
        self.inner, self.step = BrightnessReward(), step

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        if items[0].sample_id.startswith(f"{self.step}-"):
            raise KeyboardInterrupt
        return self.inner(items)


@torch.no_grad()
def _eval_brightness(pol: Any) -> float:
    """Mean brightness of 16 samples on fixed noise (independent of the training noise), the ODE sampler."""
    from firm.rl.sampling import ode_rollout

    cond = pol.encode(["a red apple on a table", "a dark street at night"]).repeat(8)
    noise = pol.initial_noise(16, torch.Generator().manual_seed(1234), cond)
    return float(pol.decode(ode_rollout(pol.velocity, noise, pol.sigmas(4, cond), cond).final, cond).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_nft_learns_exports_a_diffusers_lora_and_resumes_exactly(
    kind: str, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """A run killed during step KILLED_AT and continued with `firmctl rl train --resume auto` learns, and at step
    COMPARED_AT holds exactly the LoRA, old adapter and EMA of an uninterrupted run; that run's exported LoRA loads
    with the diffusers pipeline and reproduces its velocities; only the LoRA ever moves."""
    import diffusers
    from typer.testing import CliRunner

    from firm.cli.main import app
    from firm.rl.config import config_from_dict
    from firm.rl.trainer import Trainer

    # killed, then resumed through the CLI
    data = _data(kind, tiny[kind], tmp_path, "resumed")
    with pytest.raises(KeyboardInterrupt):
        Trainer(config_from_dict(data), reward=KilledAt(KILLED_AT)).train(progress=False)
    ckpts = sorted(p.name for p in (tmp_path / "resumed/checkpoints").iterdir())
    assert ckpts[-1] == f"step-{KILLED_AT:08d}" and not (tmp_path / "resumed/final").exists()
    config = tmp_path / "resumed.yaml"
    config.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["rl", "train", "--config", str(config), "--resume", "auto"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["steps"] == STEPS
    metrics = [json.loads(x) for x in (tmp_path / "resumed/run/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(STEPS))
    rewards = [m["reward/mean"] for m in metrics]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.005, rewards

    # uninterrupted, in process, up to COMPARED_AT
    trainer = Trainer(config_from_dict({**_data(kind, tiny[kind], tmp_path, "full"), "steps": COMPARED_AT}))
    pol = trainer.policy
    before = _eval_brightness(pol)
    frozen = {
        f"{c}.{n}": p.detach().clone()
        for c, comp in pol.pipeline.components.items()
        if isinstance(comp, torch.nn.Module)
        for n, p in comp.named_parameters()
        if ".lora_" not in n
    }
    trainer.train(progress=False)
    params = {
        f"{c}.{n}": p
        for c, comp in pol.pipeline.components.items()
        if isinstance(comp, torch.nn.Module)
        for n, p in comp.named_parameters()
    }
    assert all(torch.equal(v, params[k]) for k, v in frozen.items())
    step = f"checkpoints/step-{COMPARED_AT:08d}"
    for name in ("pytorch_lora_weights", "trainable_lora", "old_lora"):
        full = load_file(str(tmp_path / "full" / step / f"{name}.safetensors"))
        resumed = load_file(str(tmp_path / "resumed" / step / f"{name}.safetensors"))
        assert resumed.keys() == full.keys() and len(full) > 0, name
        for k in full:
            assert torch.allclose(resumed[k], full[k], atol=1e-6), (name, k)

    # the exported LoRA (the parameter EMA) loads into a fresh pipeline with diffusers' load_lora_weights
    pipe = getattr(diffusers, PIPELINES[kind]).from_pretrained(str(tiny[kind]))
    pipe.load_lora_weights(str(tmp_path / "full/final/lora"))
    cond = pol.encode(["a white cat on a sofa"])
    x = pol.initial_noise(1, torch.Generator().manual_seed(5), cond)
    s = torch.tensor([0.7])
    with torch.no_grad():
        with trainer.ema_applied():
            ours = pol.velocity(x, s, cond)
        pol.transformer, trained = pipe.transformer, pol.transformer
        try:
            theirs = pol.velocity(x, s, cond)
            pipe.disable_lora()
            base = pol.velocity(x, s, cond)
            # … and the resumed run's final LoRA, loaded the same way, samples brighter images than the base model
            pipe.unload_lora_weights()
            pipe.load_lora_weights(str(tmp_path / "resumed/final/lora"))
            after = _eval_brightness(pol)
        finally:
            pol.transformer = trained
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
    assert not torch.allclose(theirs, base, atol=1e-4)  # the LoRA did change the model
    assert after > before + 0.01, (before, after)


@pytest.mark.parametrize(
    ("kind", "override", "named"),
    [
        # a directory of the other family
        ("qwen_image", "policy.uri=<z_image>", "policy.uri="),
        ("z_image", "policy.uri=<qwen_image>", "policy.uri="),
        # guidance the family does not take: the trainer's CFG on top of the policy's own, diffusers' Turbo knob
        ("z_image", "algorithm=grpo", "grpo.guidance_scale=4.5"),
        ("qwen_image", "algorithm=grpo", "grpo.guidance_scale=4.5"),
        ("z_image", "policy.options.guidance_scale=0.0", "policy.options.guidance_scale"),
        ("qwen_image", "policy.options.true_cfg_scale=0.5", "policy.options.true_cfg_scale"),
        ("qwen_image", "policy.prompt_template_drop=0", "policy.prompt_template_drop=0"),
    ],
)
def test_bad_input_is_one_error_line_naming_the_field(
    kind: str, override: str, named: str, tiny: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from firm.cli.main import app

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_data(kind, tiny[kind], tmp_path)))
    for other in KINDS:
        override = override.replace(f"<{other}>", str(tiny[other]))
    res = CliRunner().invoke(app, ["rl", "train", "--config", str(config), override])
    assert res.exit_code == 1 and res.stdout == "", res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert named in res.stderr, res.stderr
    if named == "policy.uri=":
        other = next(k for k in KINDS if k != kind)
        assert f"holds a {PIPELINES[other]} (that is policy.kind={other})" in res.stderr
    assert not (tmp_path / "out").exists()
