"""Numerics that match the released recipes (issue 31, RL): float32 LoRA weights, optimizer state and EMAs on a bf16
base under autocast; float32 timesteps at the model boundary and in NFT's forward process; Flow-GRPO's detached
unconditional branch and dropped zero-advantage samples (NFT keeps them); the Qwen-Image-Edit condition image and the
editing sources prepared as the official code does; the recipe and README text about the official code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from firm.rl.policies.base import Conditioning
from firm.rl.rewards import RewardItem
from firm.schemas import RewardBreakdown

REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------------------------- float32 trainables


def test_bf16_policy_keeps_lora_adam_state_and_both_emas_in_float32(tiny_cfg) -> None:
    """With `policy.dtype: bfloat16` a relative update of 1e-4 (here AdamW's weight decay, lr·wd) survives a step and
    the parameter EMA moves by (1 − d_1)·1e-4; in bf16 both round back to exactly 1."""
    from firm.rl import lora
    from firm.rl.trainer import Trainer

    trainer = Trainer(tiny_cfg(policy__dtype="bfloat16", optim__lr=1e-3, optim__weight_decay=0.1))
    t = trainer.policy.transformer
    base = [p for n, p in t.named_parameters() if "lora_" not in n]
    old = lora.adapter_params(t, lora.OLD)
    assert trainer.policy.dtype == torch.bfloat16 and {p.dtype for p in base} == {torch.bfloat16}
    assert {p.dtype for p in trainer.params + old} == {torch.float32}
    assert trainer.ema is not None and {s.dtype for s in trainer.ema.shadow} == {torch.float32}

    with torch.no_grad():
        for p in trainer.params + old:
            p.fill_(1.0)
    trainer.ema.load([torch.ones_like(p) for p in trainer.params])
    trainer._optimizer_step(1)  # no gradient: the update is AdamW's decoupled decay, p·(1 − lr·wd) = 1 − 1e-4
    assert {s["exp_avg"].dtype for s in trainer.optimizer.state.values()} == {torch.float32}
    for p in trainer.params:
        assert torch.allclose(p.detach(), torch.full_like(p, 1 - 1e-4), rtol=0, atol=1e-7)
    d1 = min(0.9, 2 / 11)  # the official warm-up decay at optimizer step 1
    for s in trainer.ema.shadow:
        assert torch.allclose(s, torch.full_like(s, 1 - (1 - d1) * 1e-4), rtol=0, atol=1e-7)
    lora.ema_update(t, 0.5)  # NFT's old adapter: 0.5·1 + 0.5·(1 − 1e-4)
    for p in old:
        assert torch.allclose(p.detach(), torch.full_like(p, 1 - 5e-5), rtol=0, atol=1e-7)


@pytest.mark.parametrize("algorithm", ["nft", "grpo"])
def test_a_bf16_step_trains_the_float32_lora_under_autocast(tiny_cfg, algorithm: str) -> None:
    from firm.rl.trainer import Trainer

    trainer = Trainer(tiny_cfg(algorithm, policy__dtype="bfloat16", steps=1, sampling__prompts_per_step=1))
    before = [p.detach().clone() for p in trainer.params]
    res = trainer.train_step()
    assert res.metrics["optim/updates"] == 1.0 and res.metrics["grad_norm"] > 0
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, trainer.params, strict=True))
    assert {p.dtype for p in trainer.params} == {torch.float32}


# ----------------------------------------------------------------------------------------------- float32 timesteps


@pytest.fixture(scope="module")
def tiny_pipes(tmp_path_factory: pytest.TempPathFactory, tiny_sd3: Path) -> dict[str, Path]:
    from firm.rl.policies.tiny import build_tiny_qwen_edit
    from firm.rl.policies.tiny_flux import build_tiny_flux2_klein, build_tiny_flux_kontext

    root = tmp_path_factory.mktemp("numerics")
    return {
        "sd3": tiny_sd3,
        "qwen_edit": build_tiny_qwen_edit(root / "qwen_edit"),
        "flux_kontext": build_tiny_flux_kontext(root / "kontext"),
        "flux2_klein": build_tiny_flux2_klein(root / "klein"),
    }


def _load(kind: str, uri: Path, dtype: str = "bfloat16", **extra: Any) -> Any:
    from firm.rl.config import PolicyConfig
    from firm.rl.policies.loading import load_policy

    # the tiny Qwen3 has 3 layers
    options = {"text_encoder_out_layers": [1, 2, 3]} if kind == "flux2_klein" else {}
    if kind == "qwen_edit":
        extra = {"prompt_template_drop": 0, "condition_pixels": 56 * 56, **extra}
    tokens = {"sd3": 16, "qwen_edit": 96}.get(kind, 64)
    cfg = PolicyConfig(
        kind=kind,
        uri=str(uri),
        dtype=dtype,
        resolution=32,
        max_sequence_length=tokens,
        options=options,
        **extra,
    )
    return load_policy(cfg, torch.device("cpu"))


# the families whose transformer keeps a float32 timestep up to its sinusoidal embedding (Qwen-Image's and FLUX.1's
# cast it to their embedded latents' dtype inside the model, in the official trainers too): that embedding module
EMBEDDING = {"sd3": "time_text_embed", "flux2_klein": "time_guidance_embed"}


@pytest.mark.parametrize("kind", ["sd3", "qwen_edit", "flux_kontext", "flux2_klein"])
def test_bf16_policies_hand_the_model_float32_latents_and_timesteps(
    tiny_pipes: dict[str, Path], kind: str
) -> None:
    pol = _load(kind, tiny_pipes[kind])
    seen: dict[str, torch.Tensor] = {}

    def at_model(_m: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen["timestep"], seen["hidden"] = kwargs["timestep"], kwargs["hidden_states"]

    def at_embedding(_m: Any, args: Any) -> None:
        seen["embedded"] = args[0]

    pol.transformer.register_forward_pre_hook(at_model, with_kwargs=True)
    if kind in EMBEDDING:
        getattr(pol.transformer, EMBEDDING[kind]).register_forward_pre_hook(at_embedding)
    src = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))] if pol.task == "edit" else None
    cond = pol.encode(["a red cat"], src)
    x = pol.initial_noise(1, torch.Generator().manual_seed(1), cond)
    sigma = torch.tensor([0.7013])  # 0.69921875 in bf16: 1.4 timestep units off
    with torch.no_grad():
        v = pol.velocity(x, sigma, cond)
    scale = 1000.0 if kind == "sd3" else 1.0  # SD3 takes timesteps, the others σ
    assert seen["timestep"].dtype == torch.float32 and torch.equal(seen["timestep"], sigma * scale)
    assert seen["hidden"].dtype == torch.float32
    assert v.dtype == torch.bfloat16  # the transformer ran under bf16 autocast
    if kind in EMBEDDING:
        emb = seen["embedded"]
        assert emb.dtype == torch.float32 and torch.equal(emb, sigma * 1000.0)


class ToyPolicy:
    """A velocity w_c·x for the conditional rows (c = 1) and w_u·x for the unconditional ones (c = 2)."""

    transformer = None

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.w_c = torch.nn.Parameter(torch.tensor(0.3))
        self.w_u = torch.nn.Parameter(torch.tensor(-0.2))

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        w = torch.where(cond.tensors["c"] == 1, self.w_c, self.w_u)
        return w.reshape(-1, *([1] * (x.ndim - 1))) * x.float()


def test_nft_forward_process_is_float32_for_a_bf16_policy(tiny_cfg) -> None:
    from firm.rl.trainer import _gen
    from firm.rl.update import Batch, StepUpdate

    cfg = tiny_cfg("nft")
    sigmas = torch.linspace(1.0, 0.0, cfg.sampling.num_steps + 1)
    upd = StepUpdate(cfg, ToyPolicy(torch.bfloat16), 0, sigmas, _gen)  # type: ignore[arg-type]
    final = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    b = Batch(0, Conditioning({"c": torch.ones(4)}), None, final)
    xt, s, eps = upd._nft_inputs(b, 0)
    assert xt.dtype == s.dtype == eps.dtype == torch.float32
    sb = sigmas[upd.timesteps(b)[:, 0]].reshape(-1, 1)
    assert torch.equal(s, sigmas[upd.timesteps(b)[:, 0]])
    assert torch.equal(xt, (1 - sb) * final.float() + sb * eps)  # what the loss recomputes, unrounded


# ----------------------------------------------------------------------------------------------- Flow-GRPO


def test_grpo_update_has_no_gradient_through_the_unconditional_branch(tiny_cfg) -> None:
    from firm.rl.trainer import _gen
    from firm.rl.update import Batch, StepUpdate

    cfg = tiny_cfg("grpo", grpo__kl_coef=0.0, grpo__guidance_scale=4.5)
    k, steps = 4, cfg.sampling.num_steps
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    pol = ToyPolicy()
    upd = StepUpdate(cfg, pol, 0, sigmas, _gen)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    b = Batch(
        0,
        Conditioning({"c": torch.ones(k)}),
        Conditioning({"c": torch.full((k,), 2.0)}),
        torch.randn(k, 8, generator=g),
        states=torch.randn(k, steps + 1, 8, generator=g),
        log_probs=torch.zeros(k, steps),
    )
    upd.backward(b, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.full((k,), 1 / k))
    assert pol.w_c.grad is not None and float(pol.w_c.grad.abs()) > 0
    assert pol.w_u.grad is None or float(pol.w_u.grad.abs()) == 0.0  # Flow-GRPO detaches noise_pred_uncond


class OneFlatGroup:
    """The step's first group scores 0.5 on every sample (advantage 0), the second 0.1, 0.2, 0.3, 0.9."""

    task = "gen"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        self.calls += 1
        vals = [0.5] * len(items) if self.calls % 2 else [0.1, 0.2, 0.3, 0.9][: len(items)]
        return [RewardBreakdown(task="gen", formulation="test", reward=v, status="ok") for v in vals]


@pytest.mark.parametrize(("algorithm", "trained"), [("grpo", {1: 1 / 4}), ("nft", {0: 1 / 8, 1: 1 / 8})])
def test_grpo_drops_zero_advantage_samples_nft_trains_them(
    tiny_cfg, monkeypatch, algorithm: str, trained: dict[int, float]
) -> None:
    from firm.rl.trainer import Trainer
    from firm.rl.update import StepUpdate

    calls: dict[int, torch.Tensor] = {}
    guided: list[bool] = []
    orig = StepUpdate.backward

    def spy(self: StepUpdate, b: Any, advantages: torch.Tensor, weights: torch.Tensor, epoch: int = 0) -> Any:
        calls[b.slot] = weights.clone()
        guided.append(b.uncond is not None)
        return orig(self, b, advantages, weights, epoch)

    monkeypatch.setattr(StepUpdate, "backward", spy)
    trainer = Trainer(tiny_cfg(algorithm, steps=1), reward=OneFlatGroup())
    res = trainer.train_step()
    assert set(calls) == set(trained)  # GRPO: the flat group is not trained at all
    for slot, w in trained.items():  # … and the loss is a mean over the trained samples only
        assert torch.allclose(calls[slot], torch.full((4,), w))
    assert res.metrics["optim/trained_samples"] == 4.0 * len(trained)
    assert res.metrics["reward/trained"] == 8.0  # both groups have advantages (the flat one exactly 0)
    assert set(guided) == {algorithm == "grpo"}  # CFG 4.5 for Flow-GRPO; NFT rolls out and trains CFG-free


def test_a_flat_group_has_advantages_of_exactly_zero() -> None:
    from firm.rl.advantages import group_advantages, trained_flags

    stats = group_advantages([[0.1, 0.1, 0.1], [0.0, 1.0, 0.5]], std="global")
    assert stats.advantages[:3] == [0.0, 0.0, 0.0]  # not the residue of 0.1 − mean(0.1, 0.1, 0.1)
    assert trained_flags(stats.advantages, drop_zero=True) == [False] * 3 + [True, True, False]
    assert trained_flags([*stats.advantages, None], drop_zero=False) == [True] * 6 + [False]


# ----------------------------------------------------------------------------------------------- editing sources


def test_qwen_edit_condition_image_follows_the_pipeline_rule(tiny_pipes: dict[str, Path]) -> None:
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE
    from PIL import Image

    from firm.models.processors import image_processor
    from firm.rl.config import PolicyConfig

    assert PolicyConfig(kind="qwen_edit", uri="x").condition_pixels == CONDITION_IMAGE_SIZE == 384 * 384
    pol = _load("qwen_edit", tiny_pipes["qwen_edit"], dtype="float32", condition_pixels=CONDITION_IMAGE_SIZE)
    sizes: list[tuple[int, int]] = []
    orig = pol.pipeline._get_qwen_prompt_embeds

    def spy(prompt: Any, image: Any, **kw: Any) -> Any:
        sizes.append(image[0].size)
        return orig(prompt, image, **kw)

    pol.pipeline._get_qwen_prompt_embeds = spy
    pol.encode(["make it red"], [Image.new("RGB", (300, 300), (200, 10, 10))])
    pol.encode(["make it red"], [Image.new("RGB", (90, 60), (200, 10, 10))])
    assert sizes == [(384, 384), (480, 320)]  # 384² area, aspect kept, 32-pixel grid (calculate_dimensions)
    # the Qwen2.5-VL processor (patch 14 × merge 2, its default pixel bounds) turns the square one into 392²
    grid = image_processor()(images=[Image.new("RGB", (384, 384))], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 28, 28]]


def test_edit_sources_are_centre_cropped_and_lanczos_resized(tmp_path: Path) -> None:
    from PIL import Image

    from firm.rl.data import load_source

    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(20, 60, 3, generator=g) * 255).to(torch.uint8)
    red = torch.tensor([255, 0, 0], dtype=torch.uint8)
    pixels[:, :20] = pixels[:, 40:] = red  # red sides around a noisy centre
    img = Image.fromarray(pixels.numpy())
    img.save(tmp_path / "wide.png")
    got = load_source(str(tmp_path / "wide.png"), 8)
    want = img.crop((20, 0, 40, 20)).resize((8, 8), Image.Resampling.LANCZOS)
    want_t = torch.tensor(list(want.getdata()), dtype=torch.float32).reshape(8, 8, 3).permute(2, 0, 1) / 255.0
    assert got.shape == (3, 8, 8) and torch.equal(got, want_t)


# ----------------------------------------------------------------------------------------------- what the text says


def test_recipes_and_readme_say_what_the_official_code_does() -> None:
    for name in ("sd35m_nft_qma.yaml", "sd35m_grpo_qma.yaml"):
        header = (REPO / "firm/recipes/rl" / name).read_text().split("\n#\n", 1)[0]
        words = " ".join(line.lstrip("# ") for line in header.splitlines())
        official, firm = words.split(" official", 1)[1].split(" FIRM: ", 1)
        # no official SD3 trainer enables it: the official part may only say so; FIRM lists it as its own choice
        assert official.count("gradient checkpointing") == official.count(
            "not enable gradient checkpointing"
        ), name
        assert "gradient checkpointing" in firm, name
    from firm.rl.config import load_config

    recipes = REPO / "firm/recipes/rl"
    for name in ("sd35m_nft_qma", "sd35m_grpo_qma", "qwen_edit_2509_nft_cme"):
        pol = load_config(recipes / f"{name}.yaml").policy
        assert (pol.dtype, pol.gradient_checkpointing) == ("bfloat16", True), name
    edit = load_config(recipes / "qwen_edit_2509_nft_cme.yaml").policy
    assert (edit.max_sequence_length, edit.condition_pixels) == (1024, 384 * 384)
    assert "squashed" not in (recipes / "flux_kontext_dev_nft_cme.yaml").read_text()
    readme = (REPO / "firm/rl/README.md").read_text()
    for unread in ("not in the index", "compiled `.pyc`", "is not in the index"):
        assert unread not in readme
    for fact in ("prompt banning", "ban_std_thres", "EMAModuleWrapper", "run_sampling"):
        assert fact in readme
