"""The FLUX families on their tiny models: FLUX.1-Kontext (editing, `flux_kontext`) and FLUX.2-klein (text-to-image,
`flux2_klein`).

For each family: rollouts have the family's latent layout and repeat exactly under a seed; the NFT loss sends
gradients into the trainable LoRA only; DiffusionNFT raises a cheap known reward (brightness); the exported LoRA
loads with the real diffusers pipeline's `load_lora_weights` and reproduces the trained velocities; a run resumed
with `checkpoint.resume=auto` from the checkpoint an interrupted run would have left ends with exactly the weights of
the uninterrupted run. Bad input through `firmctl rl train` is one `error:` line naming the field: a checkpoint
directory of the other family, an editing prompt file without source images, a guidance setting the family does not
take.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

KINDS = ("flux_kontext", "flux2_klein")
STEPS = 14  # learning run length; the resume run continues from its checkpoint at RESUME_FROM
RESUME_FROM = 12


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from firm.rl.policies.tiny_flux import build_tiny_flux2_klein, build_tiny_flux_kontext

    root = tmp_path_factory.mktemp("tiny-flux")
    return {
        "flux_kontext": build_tiny_flux_kontext(root / "kontext"),
        "flux2_klein": build_tiny_flux2_klein(root / "klein"),
    }


@pytest.fixture(scope="session")
def flux_prompts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from firm.rl.policies.tiny import write_edit_prompts, write_prompts

    root = tmp_path_factory.mktemp("flux-prompts")
    return {
        "flux_kontext": write_edit_prompts(root / "edits" / "prompts.jsonl"),
        "flux2_klein": write_prompts(root / "prompts.txt"),
    }


def _config(kind: str, policy: Path, prompts: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    """A 32 px tiny run of `kind` as a config dict (dotted override keys with `__`)."""
    from firm.rl.config import apply_overrides

    options = (
        {"text_encoder_out_layers": [1, 2, 3]} if kind == "flux2_klein" else {}
    )  # the tiny Qwen3 has 3 layers
    data: dict[str, Any] = {
        "name": f"test-{kind}",
        "task": "edit" if kind == "flux_kontext" else "gen",
        "output_uri": str(out),
        "steps": STEPS,
        "seed": 0,
        "device": "cpu",
        "policy": {
            "kind": kind,
            "uri": str(policy),
            "resolution": 32,
            "max_sequence_length": 64,
            "options": options,
        },
        "lora": {"rank": 4, "alpha": 8},
        "sampling": {"num_steps": 4, "group_size": 4, "prompts_per_step": 2, "eval_num_steps": 4},
        "optim": {"lr": 4e-2},
        "reward": {"kind": "brightness", "async_overlap": False, "retries": 0, "retry_backoff_s": 0},
        "data": {"prompts": str(prompts)},
        "checkpoint": {"every_steps": RESUME_FROM},
        "monitor": {"tensorboard": False},
    }
    apply_overrides(data, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])
    return data


@torch.no_grad()
def _eval_brightness(trainer: Any, n: int = 16) -> float:
    """Mean brightness of the policy's ODE samples for two fixed prompts (and sources) on fixed noise."""
    from firm.rl.sampling import ode_rollout

    pol = trainer.policy
    items = trainer.prompts[:2]
    sources = [trainer._source(it) for it in items] if pol.task == "edit" else None
    cond = pol.encode([it.prompt for it in items], sources).repeat(n // 2)
    noise = pol.initial_noise(n, torch.Generator().manual_seed(1234), cond)
    traj = ode_rollout(pol.velocity, noise, pol.sigmas(4, cond), cond)
    return float(pol.decode(traj.final, cond).mean())


@dataclass
class Trained:
    kind: str
    trainer: Any
    rewards: list[float]
    before: float
    after: float
    data: dict[str, Any]
    out: Path


@pytest.fixture(scope="module", params=KINDS)
def trained(request: pytest.FixtureRequest, tiny_flux, flux_prompts, tmp_path_factory) -> Trained:
    """One NFT learning run per family (shared by the tests below)."""
    from firm.rl.config import config_from_dict
    from firm.rl.trainer import Trainer

    torch.set_num_threads(1)
    kind = request.param
    out = tmp_path_factory.mktemp(f"run-{kind}") / "out"
    data = _config(kind, tiny_flux[kind], flux_prompts[kind], out)
    trainer = Trainer(config_from_dict(data))
    before = _eval_brightness(trainer)
    results = trainer.train(progress=False)
    return Trained(
        kind,
        trainer,
        [r.metrics["reward/mean"] for r in results],
        before,
        _eval_brightness(trainer),
        data,
        out,
    )


def test_rollouts_have_the_family_layout_and_repeat_under_a_seed(trained: Trained) -> None:
    from firm.rl.trainer import Trainer

    tr: Trainer = trained.trainer
    item = tr.prompts[0]
    a = tr._rollout_group(item, step=3, slot=0)
    b = tr._rollout_group(item, step=3, slot=0)
    c = tr._rollout_group(item, step=3, slot=1)
    channels = (
        64 if trained.kind == "flux_kontext" else 16
    )  # packed 2×2 × 16 VAE channels / patchified 2×2 × 4
    assert a.batch.final.shape == (4, 4, channels)  # group of 4, (32 px / 8 / 2)² = 4 tokens
    assert a.images.shape == (4, 3, 32, 32) and 0.0 <= float(a.images.min()) <= float(a.images.max()) <= 1.0
    assert torch.equal(a.batch.final, b.batch.final) and torch.equal(a.images, b.images)
    assert not torch.allclose(a.batch.final, c.batch.final)  # another prompt slot draws other noise
    assert not torch.allclose(a.batch.final[0], a.batch.final[1])  # the group's samples differ
    sig = tr.policy.sigmas(4, a.batch.cond)
    assert sig.shape == (5,) and float(sig[0]) == pytest.approx(1.0) and float(sig[-1]) == 0.0
    assert bool((sig[1:] < sig[:-1]).all())
    if trained.kind == "flux_kontext":  # the source image's packed latents ride along in the conditioning
        assert a.batch.cond.tensors["image_latents"].shape == (4, 4, 64)
        assert a.source is not None and a.source.shape == (3, 32, 32)


def test_nft_loss_sends_gradients_into_the_trainable_lora_only(trained: Trained) -> None:
    from firm.rl import lora
    from firm.rl.advantages import optimality_probability
    from firm.rl.losses import nft_loss

    tr = trained.trainer
    pol, t = tr.policy, tr.policy.transformer
    grp = tr._rollout_group(tr.prompts[1], step=0, slot=0)
    x0, cond = grp.batch.final, grp.batch.cond
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    s = torch.tensor([0.9, 0.7, 0.5, 0.3])
    xt = (1 - s.view(-1, 1, 1)) * x0 + s.view(-1, 1, 1) * eps
    with torch.no_grad(), lora.using(t, lora.OLD):
        v_old = pol.velocity(xt, s, cond)
    with torch.no_grad(), lora.using(t, None):
        v_ref = pol.velocity(xt, s, cond)
    r = optimality_probability(torch.tensor([1.0, -1.0, 0.5, -0.5]), 5.0)
    tr.optimizer.zero_grad(set_to_none=True)
    parts = nft_loss(pol.velocity(xt, s, cond), v_old, v_ref, x0, eps, s, r)
    assert torch.isfinite(parts.loss) and float(parts.kl) > 0  # the trained LoRA has moved off the reference
    parts.loss.backward()
    trainable = {id(p) for p in lora.trainable_params(t)}
    grads = {n: p.grad for n, p in t.named_parameters() if id(p) in trainable}
    assert grads and all(g is not None for g in grads.values())
    assert any(float(g.abs().max()) > 0 for n, g in grads.items() if "lora_B" in n)
    for (
        comp
    ) in pol.pipeline.components.values():  # base weights, the old adapter, text encoders, VAE: nothing
        if isinstance(comp, torch.nn.Module):
            for n, p in comp.named_parameters():
                if id(p) not in trainable:
                    assert p.grad is None and not p.requires_grad, n
    tr.optimizer.zero_grad(set_to_none=True)


def test_nft_raises_the_mean_reward(trained: Trained) -> None:
    rewards = trained.rewards
    assert len(rewards) == STEPS
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.03, rewards
    assert trained.after > trained.before + 0.03, (trained.before, trained.after)


def test_exported_lora_loads_with_the_diffusers_pipeline(trained: Trained) -> None:
    """`final/lora` loads with FluxKontextPipeline / Flux2KleinPipeline.load_lora_weights and gives the trained
    velocities (the exported LoRA is the parameter EMA); with the LoRA disabled it gives the base model's."""
    from firm.rl.policies.pretrained import absent_components

    tr = trained.trainer
    pol = tr.policy
    cls = type(pol.pipeline)
    assert (
        cls.__name__
        == {"flux_kontext": "FluxKontextPipeline", "flux2_klein": "Flux2KleinPipeline"}[trained.kind]
    )
    src = str(pol.source)
    pipe = cls.from_pretrained(src, **absent_components(src))
    pipe.load_lora_weights(str(trained.out / "final" / "lora"))
    grp = tr._rollout_group(tr.prompts[0], step=1, slot=0)
    x = pol.initial_noise(2, torch.Generator().manual_seed(7), grp.batch.cond)
    s, cond = torch.tensor([0.8, 0.4]), grp.batch.cond.select([0, 1])
    with torch.no_grad(), tr.ema_applied():
        ours = pol.velocity(x, s, cond)
    ours_transformer = pol.transformer
    try:
        pol.transformer = pipe.transformer
        with torch.no_grad():
            theirs = pol.velocity(x, s, cond)
            pipe.disable_lora()
            base = pol.velocity(x, s, cond)
    finally:
        pol.transformer = ours_transformer
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
    assert not torch.allclose(theirs, base, atol=1e-4)  # the LoRA did change the model


def test_resume_auto_continues_exactly(trained: Trained, tmp_path: Path) -> None:
    """An interrupted run — here: a fresh output_uri holding only the checkpoint of step RESUME_FROM, which is what a
    run killed before its next checkpoint leaves — resumed with checkpoint.resume=auto ends with exactly the
    uninterrupted run's weights and step metrics."""
    from firm.rl.checkpoint import step_uri
    from firm.rl.config import config_from_dict
    from firm.rl.trainer import Trainer
    from firm.storage import publish_dir, resolve_local

    out = tmp_path / "resumed"
    publish_dir(resolve_local(step_uri(str(trained.out), RESUME_FROM)), step_uri(str(out), RESUME_FROM))
    data = {
        **trained.data,
        "output_uri": str(out),
        "checkpoint": {"every_steps": RESUME_FROM, "resume": "auto"},
    }
    resumed = Trainer(config_from_dict(data))
    results = resumed.train(progress=False)
    assert [r.step for r in results] == list(range(RESUME_FROM, STEPS))
    assert [r.metrics["reward/mean"] for r in results] == trained.rewards[RESUME_FROM:]
    for name in (
        "final/lora/pytorch_lora_weights.safetensors",
        f"checkpoints/step-{STEPS:08d}/old_lora.safetensors",
    ):
        a, b = load_file(str(trained.out / name)), load_file(str(out / name))
        assert a.keys() == b.keys() and len(a) > 0
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (name, k)
    shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- bad input


def _train_cli(config: dict[str, Any], path: Path, *overrides: str) -> Any:
    from typer.testing import CliRunner

    from firm.cli.main import app

    path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(app, ["rl", "train", "--config", str(path), *overrides])


def _one_error_line(res: Any, *fragments: str) -> str:
    assert res.exit_code == 1 and res.stdout == "", res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_directory_of_the_other_family_is_refused(
    kind: str, tiny_flux, flux_prompts, tmp_path: Path
) -> None:
    other = {"flux_kontext": "flux2_klein", "flux2_klein": "flux_kontext"}[kind]
    data = _config(kind, tiny_flux[other], flux_prompts[kind], tmp_path / "out")
    res = _train_cli(data, tmp_path / "run.yaml")
    line = _one_error_line(res, f"policy.uri={tiny_flux[other]}", f"(that is policy.kind={other})")
    assert f"policy.kind={kind} loads" in line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_an_editing_prompt_file_without_source_images_is_refused(
    tiny_flux, flux_prompts, tmp_path: Path
) -> None:
    data = _config("flux_kontext", tiny_flux["flux_kontext"], flux_prompts["flux2_klein"], tmp_path / "out")
    res = _train_cli(data, tmp_path / "run.yaml")
    _one_error_line(res, "prompts.txt:1: editing prompts need a source 'image'")


@pytest.mark.parametrize(
    ("kind", "overrides", "fragments"),
    [
        # FLUX.1-Kontext is guidance-distilled: no classifier-free guidance on top of its embedded guidance
        ("flux_kontext", ["algorithm=grpo"], ["grpo.guidance_scale=4.5", "guidance-distilled"]),
        # ... and its guidance-embedded transformer needs a guidance value
        ("flux_kontext", ["policy.options.guidance_scale=null"], ["policy.options.guidance_scale=null"]),
        # FLUX.2-klein has no guidance embedder: an embedded guidance value would be silently ignored
        ("flux2_klein", ["policy.options.embedded_guidance=1.0"], ["policy.options.embedded_guidance=1"]),
        # an option of another family
        (
            "flux2_klein",
            ["policy.options.guidance_scale=2.5"],
            ["policy.options.guidance_scale", "not an option"],
        ),
    ],
)
def test_guidance_the_family_does_not_take_is_refused(
    kind: str, overrides: list[str], fragments: list[str], tiny_flux, flux_prompts, tmp_path: Path
) -> None:
    data = _config(kind, tiny_flux[kind], flux_prompts[kind], tmp_path / "out")
    _one_error_line(_train_cli(data, tmp_path / "run.yaml", *overrides), *fragments)
    assert not (tmp_path / "out").exists()


def test_cfg_on_a_step_distilled_klein_is_refused(flux_prompts, tmp_path: Path) -> None:
    """A step-distilled FLUX.2-klein (model_index.json `is_distilled: true`) ignores classifier-free guidance; the
    recipe's validation reads that from a local pipeline directory before anything is loaded."""
    distilled = tmp_path / "klein-distilled"
    distilled.mkdir()
    (distilled / "model_index.json").write_text(
        json.dumps({"_class_name": "Flux2KleinPipeline", "is_distilled": True})
    )
    data = _config("flux2_klein", distilled, flux_prompts["flux2_klein"], tmp_path / "out")
    res = _train_cli(data, tmp_path / "run.yaml", "algorithm=grpo", "grpo.guidance_scale=4.0")
    _one_error_line(res, "grpo.guidance_scale=4", "is_distilled=true")
    res = _train_cli(data, tmp_path / "run.yaml", "algorithm=grpo", "grpo.guidance_scale=1.0", "steps=0")
    _one_error_line(
        res, "steps"
    )  # without CFG the guidance check passes (and the next bad field is reported)
