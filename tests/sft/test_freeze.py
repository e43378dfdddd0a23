"""Frozen vision tower and merger (`model.freeze_vision_tower`, `model.freeze_merger`), as LLaMA-Factory — which trained
the released FIRM critics — freezes them by default: frozen, they are not in the optimizer and unchanged after a
step; not frozen, they change. The paper recipes freeze both; LoRA puts no adapters on frozen parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from firm.critic.sft_config import SFTConfig, load_sft_config
from firm.errors import ConfigError
from tests.sft.helpers import sft_config


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from firm.curation.synthetic_sft import write_synthetic_sft_dataset

    out = tmp_path_factory.mktemp("freeze-data") / "synthetic"
    write_synthetic_sft_dataset(out, n_edit=4, axes=["execution"], size=56, val_fraction=0.0, seed=0)
    return out


def _config(model: Path, dataset: Path, tmp: Path, **over: object) -> SFTConfig:
    return SFTConfig.model_validate(sft_config(model, dataset, tmp, **over))


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_vision_parts_are_not_optimised_and_do_not_change(
    tiny_critic_dir: Path, small_dataset: Path, tmp_path: Path, freeze: bool
) -> None:
    from firm.critic.collate import SFTCollator
    from firm.critic.sft import load_model, load_rows, make_optimizer
    from firm.critic.sft_model import vision_part

    cfg = _config(
        tiny_critic_dir,
        small_dataset,
        tmp_path,
        model__freeze_vision_tower=freeze,
        model__freeze_merger=freeze,
    )
    model, processor = load_model(cfg, torch.float32, None)
    optimizer = make_optimizer(model, cfg)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds, train, _ = load_rows(cfg)
    loss = model(**SFTCollator(processor, ds)(train[:2])).loss
    loss.backward()
    optimizer.step()

    changed: dict[str | None, bool] = {"tower": False, "merger": False, None: False}
    for name, p in model.named_parameters():
        part = vision_part(name)
        changed[part] |= not torch.equal(before[name], p.detach())
        if part is not None:
            assert (id(p) in optimised) is not freeze, name
            assert p.requires_grad is not freeze and (p.grad is None) is freeze, name
    assert changed[None]  # the language model trains either way
    assert changed["tower"] is not freeze and changed["merger"] is not freeze


def test_paper_recipes_freeze_like_llama_factory() -> None:
    for name in ("qwen3vl_8b_edit_full", "qwen3vl_8b_gen_full", "qwen3vl_8b_edit_lora"):
        cfg = load_sft_config(f"critic/{name}")
        assert cfg.model.freeze_vision_tower and cfg.model.freeze_merger, name
    tiny = load_sft_config("critic/tiny_cpu")  # a random-init tiny critic has to learn to see
    assert not tiny.model.freeze_vision_tower and not tiny.model.freeze_merger


def test_lora_puts_no_adapters_on_frozen_parts(
    tiny_critic_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    from firm.critic.sft import load_model
    from firm.critic.sft_model import vision_part

    def adapted(**model_over: object) -> set[str | None]:
        over = {f"model__{k}": v for k, v in model_over.items()}
        cfg = _config(
            tiny_critic_dir, small_dataset, tmp_path, finetune="lora",
            lora__target_modules=["q_proj", "v_proj", "linear_fc1"], **over,
        )  # fmt: skip
        model, _ = load_model(cfg, torch.float32, None)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert names and all("lora_" in n for n in names)
        return {vision_part(n) for n in names}

    # linear_fc1 is a vision MLP (and merger) layer in Qwen3-VL: adapted only where not frozen
    assert adapted(freeze_vision_tower=False, freeze_merger=False) == {None, "tower", "merger"}
    assert adapted(freeze_vision_tower=True, freeze_merger=False) == {None, "merger"}
    with pytest.raises(ConfigError, match=r"\['linear_fc1'\] name no trainable module"):
        adapted(freeze_vision_tower=True, freeze_merger=True)


def test_pixel_bounds_config_is_checked(tiny_critic_dir: Path, small_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.min_pixels=5000 is above model.max_pixels=4000"):
        _config(tiny_critic_dir, small_dataset, tmp_path, model__min_pixels=5000, model__max_pixels=4000)
