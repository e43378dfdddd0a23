"""LoRA management on the policy transformer (peft through diffusers' `add_adapter`).

Two adapters live on the transformer: "default" (trainable, v_θ) and "old" (the EMA copy, v_old, which also collects
the NFT rollouts). The reference policy is the base model: adapters disabled.

Both adapters are float32 whatever the base's dtype: diffusers' `add_adapter` creates them in the base layers' dtype
(bf16 in the paper recipes), where AdamW updates below bf16's spacing (2⁻⁸ relative) round away and weight decay does
nothing. The official trainers train float32 LoRA weights: the SD3 trainers keep the whole transformer in float32
under autocast, the Qwen-Image-Edit trainer loads a bf16 base and gets float32 adapters from peft's `get_peft_model`
(`autocast_adapter_dtype=True`, the same `cast_adapter_dtype` used here).

Switching adapters happens several times per micro-batch, so `add_lora` records the LoRA layers and each adapter's
parameters once (`_Cache`) and switches them directly: diffusers' own `set_adapter` / `disable_adapters` walk every
module and look up the installed peft version on each call, which on the tiny test policies cost about a third of a
training step.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from firm.errors import ConfigError
from firm.rl.policies.registry import FAMILIES

TRAINABLE = "default"
OLD = "old"

# The official LoRA targets per family live in the policy registry (`firm.rl.policies.registry`): the projections of
# each block's `attn`, so SD3.5's second attention `attn2` stays untouched.
POLICY_LORA_TARGETS: dict[str, list[str]] = {k: f.lora_targets for k, f in FAMILIES.items()}


def lora_targets(policy_kind: str, configured: list[str] | None) -> list[str]:
    """`lora.target_modules` when set, else the policy's official list."""
    return list(configured) if configured is not None else list(POLICY_LORA_TARGETS[policy_kind])


def _lora_config(rank: int, alpha: float, init: str, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights=True if init == "default" else init,
        target_modules=targets,
    )


def present_targets(transformer: torch.nn.Module, targets: list[str]) -> list[str]:
    names = [n for n, _ in transformer.named_modules()]
    found = [t for t in targets if any(n == t or n.endswith("." + t) for n in names)]
    if not found:
        raise ConfigError(
            f"lora.target_modules={targets}: none of them exist in {type(transformer).__name__}"
        )
    return found


@dataclass
class _Cache:
    layers: list[Any]  # peft BaseTunerLayer modules, in module order
    params: dict[str, list[torch.nn.Parameter]]  # per adapter, in module order


_CACHE_ATTR = "_firm_lora_cache"


def add_lora(transformer: torch.nn.Module, *, rank: int, alpha: float, init: str, targets: list[str]) -> None:
    """Add the trainable and the old adapter (identical at start, float32); only the trainable one requires grad."""
    from peft.tuners.tuners_utils import BaseTunerLayer, cast_adapter_dtype

    found = present_targets(transformer, targets)
    transformer.__dict__.pop(_CACHE_ATTR, None)
    transformer.add_adapter(_lora_config(rank, alpha, init, found), adapter_name=TRAINABLE)
    with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the point here
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")
        transformer.add_adapter(_lora_config(rank, alpha, init, found), adapter_name=OLD)
    # bf16 / fp16 adapter weights → float32 (new Parameter objects, so before the scan below)
    for adapter in (TRAINABLE, OLD):
        cast_adapter_dtype(transformer, adapter)
    transformer.__dict__[_CACHE_ATTR] = _Cache(
        layers=[m for m in transformer.modules() if isinstance(m, BaseTunerLayer)],
        params={a: _scan(transformer, a) for a in (TRAINABLE, OLD)},
    )
    with torch.no_grad():
        for p_old, p in zip(
            adapter_params(transformer, OLD), adapter_params(transformer, TRAINABLE), strict=True
        ):
            p_old.copy_(p)
    activate(transformer, TRAINABLE)


def _key(name: str, adapter: str) -> bool:
    return "lora_" in name and f".{adapter}." in name + "."


def _scan(transformer: torch.nn.Module, adapter: str) -> list[torch.nn.Parameter]:
    return [p for n, p in transformer.named_parameters() if _key(n, adapter)]


def _cache(transformer: torch.nn.Module) -> _Cache | None:
    return transformer.__dict__.get(_CACHE_ATTR)


def adapter_params(transformer: torch.nn.Module, adapter: str) -> list[torch.nn.Parameter]:
    """The LoRA parameters of one adapter, in a stable order (module order)."""
    cache = _cache(transformer)
    if cache is not None and adapter in cache.params:
        return list(cache.params[adapter])
    return _scan(transformer, adapter)


def trainable_params(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return adapter_params(transformer, TRAINABLE)


def activate(transformer: torch.nn.Module, adapter: str) -> None:
    """Make `adapter` the active one; the trainable adapter always keeps requires_grad, the old one never has it."""
    cache = _cache(transformer)
    if cache is None:
        transformer.set_adapter(adapter)
    else:
        for layer in cache.layers:  # what diffusers' set_adapter does, without its per-call module walk
            layer.set_adapter(adapter)
    for p in adapter_params(transformer, TRAINABLE):
        p.requires_grad_(True)
    for p in adapter_params(transformer, OLD):
        p.requires_grad_(False)


def _enable(transformer: torch.nn.Module, enabled: bool) -> None:
    cache = _cache(transformer)
    if cache is None:
        (transformer.enable_adapters if enabled else transformer.disable_adapters)()
        return
    for layer in cache.layers:
        layer.enable_adapters(enabled)


@contextmanager
def using(transformer: torch.nn.Module, adapter: str) -> Iterator[None]:
    """Run the old policy (adapter="old") or the base reference (adapter=None) inside the block."""
    if adapter is None:
        _enable(transformer, False)
        try:
            yield
        finally:
            _enable(transformer, True)
            activate(transformer, TRAINABLE)
    else:
        activate(transformer, adapter)
        try:
            yield
        finally:
            activate(transformer, TRAINABLE)


@torch.no_grad()
def ema_update(transformer: torch.nn.Module, decay: float) -> None:
    """old ← decay·old + (1 − decay)·current."""
    for p_old, p in zip(
        adapter_params(transformer, OLD), adapter_params(transformer, TRAINABLE), strict=True
    ):
        p_old.mul_(decay).add_(p.detach().to(p_old.dtype), alpha=1.0 - decay)


def ema_decay(step: int, max_decay: float, ramp: float) -> float:
    """DiffusionNFT's schedule: decay = min(ramp·step, max_decay)."""
    return min(ramp * step, max_decay)


def adapter_state(transformer: torch.nn.Module, adapter: str = TRAINABLE) -> dict[str, torch.Tensor]:
    """The adapter's weights under peft's adapter-free key names (what diffusers' save_lora_weights expects)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=adapter)
    return {
        k: v.detach().cpu().clone().contiguous() for k, v in state.items()
    }  # a copy, never a view of the weights


@torch.no_grad()
def load_adapter_state(transformer: torch.nn.Module, state: dict[str, torch.Tensor], adapter: str) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter)
    unexpected = getattr(result, "unexpected_keys", []) or []
    if unexpected:
        raise ConfigError(f"LoRA state does not match the policy: unexpected keys {unexpected[:3]}")
    activate(transformer, TRAINABLE)
