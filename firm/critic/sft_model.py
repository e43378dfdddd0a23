"""What critic SFT trains of a Qwen-VL critic, and the image bounds it records in the critic's processor.

Trainable parts (`model.freeze_vision_tower`, `model.freeze_merger`), after LLaMA-Factory, which trained the released
FIRM critics: its `freeze_vision_tower` and `freeze_multi_modal_projector` default to true, and for Qwen3-VL its
vision keys are `visual.{pos_embed, patch_embed, blocks, deepstack_merger_list}` and its projector `visual.merger`
(`src/llamafactory/model/model_utils/visual.py`). Here the *vision tower* is every parameter under the model's
`visual` module except `visual.merger`, and the *merger* is `visual.merger` — the same split for Qwen2-VL, Qwen2.5-VL
and Qwen3-VL without a per-model key list.

- Full fine-tuning: frozen parts get `requires_grad=False` and so never reach the optimizer (`trainable_parameters`).
- LoRA: `lora_target_modules` resolves `lora.target_modules` (module-name suffixes) to the full names of the matching
  modules outside the frozen parts. LLaMA-Factory's `lora_target: all` means every linear layer except `lm_head`, the
  projector and — with the tower frozen — the vision tower; for Qwen3-VL those are exactly the language model's
  q/k/v/o/gate/up/down projections, FIRM's default targets. The resolution matters for Qwen2.5-VL, whose vision
  blocks also hold `gate_proj`/`up_proj`/`down_proj`: a frozen tower gets no adapters there either.

Image bounds: `apply_pixel_bounds` writes the recipe's `model.min_pixels` / `model.max_pixels` into the processor's
`size` (shortest_edge / longest_edge). The collator, the in-training eval and — through the exported processor
config — every serving path then read the same bounds with `firm.images.pixel_rule`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from firm.errors import ConfigError

VISION_MODULE = "visual"
MERGER_MODULE = "merger"


def vision_part(name: str) -> str | None:
    """ "tower", "merger" or None (not a vision parameter/module) for a parameter or module name."""
    parts = name.split(".")
    if VISION_MODULE not in parts:
        return None
    i = parts.index(VISION_MODULE)
    return "merger" if parts[i + 1 : i + 2] == [MERGER_MODULE] else "tower"


def _frozen(name: str, tower: bool, merger: bool) -> bool:
    part = vision_part(name)
    return (part == "tower" and tower) or (part == "merger" and merger)


def freeze_vision(model: Any, *, tower: bool, merger: bool) -> list[str]:
    """Set `requires_grad=False` on the vision tower and/or the merger; returns the frozen parameter names.
    Raises `ConfigError` when a part to freeze does not exist in `model`."""
    if not (tower or merger):
        return []
    names = [n for n, _ in model.named_parameters()]
    for want, part, key in ((tower, "tower", "freeze_vision_tower"), (merger, "merger", "freeze_merger")):
        if want and not any(vision_part(n) == part for n in names):
            raise ConfigError(
                f"model.{key}: the model has no `{VISION_MODULE}` {part} parameters to freeze "
                f"({type(model).__name__}); set model.{key}=false"
            )
    frozen = []
    for name, param in model.named_parameters():
        if _frozen(name, tower, merger):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def trainable_parameters(model: Any) -> list[Any]:
    """The parameters the optimizer updates (frozen parts and, under LoRA, the base weights excluded)."""
    return [p for p in model.parameters() if p.requires_grad]


def lora_target_modules(model: Any, targets: Iterable[str], *, tower: bool, merger: bool) -> list[str]:
    """Full names of the modules whose name ends in one of `targets` and that lie outside the frozen vision parts.
    Raises `ConfigError` naming the targets that match no such module."""
    wanted = list(targets)
    found: list[str] = []
    hit: set[str] = set()
    for name, _ in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in wanted and not _frozen(name, tower, merger):
            found.append(name)
            hit.add(leaf)
    missing = [t for t in wanted if t not in hit]
    if missing:
        raise ConfigError(f"lora.target_modules {missing} name no trainable module of the model")
    return found


def apply_pixel_bounds(processor: Any, *, min_pixels: int | None, max_pixels: int | None) -> None:
    """Write the recipe's pixel bounds into the processor's `size` (kept where None); saving the processor records
    them in preprocessor_config.json."""
    if min_pixels is None and max_pixels is None:
        return
    from transformers.image_utils import SizeDict

    from firm.images import processor_pixel_rule

    ip = processor.image_processor
    own = processor_pixel_rule(processor)
    lo = min_pixels if min_pixels is not None else own.min_pixels
    hi = max_pixels if max_pixels is not None else own.max_pixels
    if hi < own.factor**2:
        raise ConfigError(f"model.max_pixels={hi} is below one {own.factor}x{own.factor} patch")
    if lo > hi:
        raise ConfigError(f"model.min_pixels={lo} is above the upper bound of {hi} pixels")
    ip.size = SizeDict(shortest_edge=int(lo), longest_edge=int(hi))
