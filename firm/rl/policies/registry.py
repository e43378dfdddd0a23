"""The policy families FIRM's RL trains, by `policy.kind`.

One entry per family: which task it trains, which adapter class implements `DiffusionPolicy` for it, which diffusers
pipeline classes its saved directories hold (a directory of another family is refused before loading), its official
LoRA targets, its tiny builder (`python -m firm.rl.policies.tiny KIND OUT_DIR`) and its family options.

Family options (`policy.options` in a recipe) are the family's conditioning traps — guidance embedding vs CFG,
text-encoder templates, image packing — as a pydantic model defined next to the adapter, with the official defaults.
An option the family does not have is refused in one line naming `policy.options.<field>`.

Everything is imported lazily by dotted path, so `firm.rl.config` can validate a recipe without importing diffusers.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from firm.errors import ConfigError

# The official trainers' LoRA targets (FIRM-Reward `train_nft_sd3.py` / `train_nft_qwen_image_edit.py`, `main`):
# the projections of each block's `attn`. Bare names (`to_q`, ...) would also hit `attn2`, the second attention of
# SD3.5's dual-attention blocks.
ATTN_TARGETS = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
]


class NoOptions(BaseModel):
    """A family without options: any key in `policy.options` is refused."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class PolicyFamily:
    kind: str
    task: Literal["gen", "edit"]
    adapter: (
        str  # "module:Class" implementing DiffusionPolicy, with a `from_pretrained(cfg, device)` classmethod
    )
    pipeline_classes: tuple[str, ...]  # `_class_name` values of model_index.json that this family loads
    lora_targets: list[str]
    tiny_builder: str  # "module:function(out_dir, **kw) -> Path"
    description: str
    options: str | None = (
        None  # "module:Model" (pydantic, extra="forbid", official defaults); None = no options
    )
    aliases: tuple[str, ...] = field(default=())


FAMILIES: dict[str, PolicyFamily] = {
    f.kind: f
    for f in [
        PolicyFamily(
            kind="sd3",
            task="gen",
            adapter="firm.rl.policies.sd3:SD3Policy",
            pipeline_classes=("StableDiffusion3Pipeline",),
            lora_targets=ATTN_TARGETS,
            tiny_builder="firm.rl.policies.tiny:build_tiny_sd3",
            description="SD3 / SD3.5 text-to-image (StableDiffusion3Pipeline)",
        ),
        PolicyFamily(
            kind="qwen_edit",
            task="edit",
            adapter="firm.rl.policies.qwen_edit:QwenEditPolicy",
            pipeline_classes=("QwenImageEditPlusPipeline", "QwenImageEditPipeline"),
            lora_targets=ATTN_TARGETS,
            tiny_builder="firm.rl.policies.tiny:build_tiny_qwen_edit",
            description="Qwen-Image-Edit(-2509/Plus) editing (QwenImageEditPlusPipeline)",
        ),
        PolicyFamily(
            kind="flux_kontext",
            task="edit",
            adapter="firm.rl.policies.flux_kontext:FluxKontextPolicy",
            pipeline_classes=("FluxKontextPipeline",),
            lora_targets=ATTN_TARGETS,
            tiny_builder="firm.rl.policies.tiny_flux:build_tiny_flux_kontext",
            description="FLUX.1-Kontext-dev editing (FluxKontextPipeline)",
            options="firm.rl.policies.flux_kontext:FluxKontextOptions",
        ),
        PolicyFamily(
            kind="flux2_klein",
            task="gen",
            adapter="firm.rl.policies.flux2_klein:Flux2KleinPolicy",
            pipeline_classes=("Flux2KleinPipeline",),
            # FIRM-Reward generation/config/nft_flux2_klein.py `lora.target_modules`, resolved as its trainer does
            # (suffix match, fnmatch for the glob, modules with weights only): the attn.* projections, both streams'
            # feed-forwards, and the single-stream blocks' fused to_qkv_mlp_proj and to_out. The latter is named per
            # block: a bare `attn.to_out` would also hit the double-stream blocks' ModuleList, which peft refuses.
            lora_targets=[
                *ATTN_TARGETS,
                "ff.linear_in",
                "ff.linear_out",
                "ff_context.linear_in",
                "ff_context.linear_out",
                "attn.to_qkv_mlp_proj",
                *(f"single_transformer_blocks.{i}.attn.to_out" for i in range(64)),
            ],
            tiny_builder="firm.rl.policies.tiny_flux:build_tiny_flux2_klein",
            description="FLUX.2-klein text-to-image (Flux2KleinPipeline)",
            options="firm.rl.policies.flux2_klein:Flux2KleinOptions",
        ),
        PolicyFamily(
            kind="qwen_image",
            task="gen",
            adapter="firm.rl.policies.qwen_image:QwenImagePolicy",
            pipeline_classes=("QwenImagePipeline",),
            # FIRM-Reward generation/config/nft_qwen_image.py: the attn.* projections and both streams' MLPs
            lora_targets=[
                *ATTN_TARGETS,
                "img_mlp.net.0.proj",
                "img_mlp.net.2",
                "txt_mlp.net.0.proj",
                "txt_mlp.net.2",
            ],
            tiny_builder="firm.rl.policies.tiny_qwen_image:build_tiny_qwen_image",
            description="Qwen-Image text-to-image (QwenImagePipeline)",
            options="firm.rl.policies.qwen_image:QwenImageOptions",
        ),
        PolicyFamily(
            kind="z_image",
            task="gen",
            adapter="firm.rl.policies.z_image:ZImagePolicy",
            pipeline_classes=("ZImagePipeline",),
            # FIRM-Reward generation/config/nft_zimage_turbo.py targets to_q/to_k/to_v/to_out.0/w1/w2/w3: in diffusers'
            # ZImageTransformer2DModel exactly these modules (its attention is `attention`, not `attn`)
            lora_targets=[f"attention.{m}" for m in ("to_q", "to_k", "to_v", "to_out.0")]
            + [f"feed_forward.{m}" for m in ("w1", "w2", "w3")],
            tiny_builder="firm.rl.policies.tiny_qwen_image:build_tiny_z_image",
            description="Z-Image-Turbo text-to-image (ZImagePipeline)",
            options="firm.rl.policies.z_image:ZImageOptions",
        ),
    ]
}

KINDS = tuple(FAMILIES)


def _load(dotted: str) -> Any:
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def family(kind: str, what: str = "policy.kind") -> PolicyFamily:
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ConfigError(f"{what}={kind}: unknown policy family (known: {', '.join(KINDS)})") from None


def adapter_class(kind: str) -> Any:
    return _load(family(kind).adapter)


def tiny_builder(kind: str) -> Any:
    return _load(family(kind).tiny_builder)


def options_model(kind: str) -> type[BaseModel]:
    fam = family(kind)
    return _load(fam.options) if fam.options else NoOptions


def validate_options(kind: str, options: dict[str, Any]) -> BaseModel:
    """The family's options with its official defaults; a bad or unsupported key → one line naming the field."""
    model = options_model(kind)
    try:
        return model.model_validate(options)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields) or "none"
            raise ConfigError(
                f"policy.options.{loc}: not an option of policy.kind={kind} (its options: {known})"
            ) from None
        raise ConfigError(f"policy.options.{loc}: {err['msg']}") from None


def check_directory_family(kind: str, path: str, what: str = "policy.uri") -> None:
    """A local pipeline directory must hold this family's pipeline (model_index.json `_class_name`)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return
    try:
        saved = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError):
        return
    fam = family(kind)
    if saved and saved not in fam.pipeline_classes:
        owner = next((f.kind for f in FAMILIES.values() if saved in f.pipeline_classes), None)
        hint = f" (that is policy.kind={owner})" if owner else ""
        raise ConfigError(
            f"{what}={path}: holds a {saved}{hint}, but policy.kind={kind} loads {' / '.join(fam.pipeline_classes)}"
        )
