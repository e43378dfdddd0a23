"""The policy interface the samplers, losses and trainer use: a flow-matching velocity model plus its codecs.

A policy owns a diffusers pipeline. Everything outside `firm/rl/policies/` sees only: conditioning from prompts (and
source images for editing), initial noise in the model's latent layout, the sigma schedule, the velocity
v(x_σ, σ, cond) (convention x_σ = (1−σ)·x0 + σ·ε, v = ε − x0), and decoding to images in [0, 1].

Numerics (the official trainers' mixed precision): the frozen base weights are in `policy.dtype`; the LoRA weights
are float32 (`firm.rl.lora.add_lora`), so the optimizer state and both EMAs are too. Every adapter runs its transformer
inside `DiffusionPolicy.autocast()` (torch autocast to `policy.dtype` on the policy's device, off for float32) and
hands it float32 latents and a float32 σ / timestep: the official trainers compute x_σ = (1 − σ)·x0 + σ·ε and
σ = timestep / 1000 in float32 and pass them to the model under autocast. What the model does with them is its own:
SD3's and FLUX.2's transformers keep the float32 timestep up to the sinusoidal embedding; Qwen-Image's and FLUX.1's
cast it to the dtype of their embedded latents (bf16 under bf16 autocast), in the official trainers as here.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def dynamic_shift_sigmas(
    scheduler: Any, image_seq_len: int, num_steps: int, sigmas: Any = None
) -> torch.Tensor:
    """The flow-matching scheduler's σ schedule (num_steps + 1 values, float32, CPU) with the resolution-dependent
    shift μ of the FLUX / Qwen-Image / Z-Image pipelines (diffusers' `calculate_shift`: μ linear in the image token
    count between `base_shift` and `max_shift`); `sigmas` default: linspace(1, 1/num_steps, num_steps)."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    mu = calculate_shift(
        image_seq_len,
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", 1.15),
    )
    if sigmas is None:
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    scheduler.set_timesteps(sigmas=sigmas, mu=mu, device="cpu")
    return scheduler.sigmas.detach().float().cpu().clone()


@dataclass
class Conditioning:
    """Per-sample conditioning tensors (batch first) plus non-tensor extras that are shared by the whole batch."""

    tensors: dict[str, torch.Tensor]
    extras: dict[str, Any] = field(default_factory=dict)

    def repeat(self, k: int) -> Conditioning:
        """Each sample repeated k times in a row (a prompt's group)."""
        return Conditioning(
            {n: t.repeat_interleave(k, dim=0) for n, t in self.tensors.items()}, dict(self.extras)
        )

    def select(self, idx: torch.Tensor | list[int]) -> Conditioning:
        index = torch.as_tensor(idx, dtype=torch.long)
        return Conditioning(
            {n: t.index_select(0, index.to(t.device)) for n, t in self.tensors.items()}, dict(self.extras)
        )

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        names = parts[0].tensors.keys()
        return Conditioning(
            {n: torch.cat([p.tensors[n] for p in parts]) for n in names}, dict(parts[0].extras)
        )


class DiffusionPolicy(ABC):
    """A diffusion policy with a LoRA-adaptable transformer (`self.transformer`)."""

    task: str
    pipeline: Any
    transformer: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    resolution: int
    source: str  # where the base pipeline was loaded from (local dir or HF id)

    def adopt(self, pipeline: Any, *, device: torch.device, resolution: int, source: str) -> None:
        """Every adapter's set-up: hold the pipeline and its transformer, freeze every module (the LoRA added later
        is the only trainable part), eval mode."""
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.device = device
        self.dtype = self.transformer.dtype
        self.resolution = resolution
        self.source = source
        self.vae_scale = pipeline.vae_scale_factor
        for comp in pipeline.components.values():
            if isinstance(comp, torch.nn.Module):
                comp.requires_grad_(False)
        self.eval_mode()

    @abstractmethod
    def encode(self, prompts: list[str], sources: list[Any] | None = None) -> Conditioning:
        """Conditioning for each prompt (and source image for editing); no gradients."""

    @abstractmethod
    def initial_noise(self, n: int, generator: torch.Generator, cond: Conditioning) -> torch.Tensor:
        """ε ~ N(0, I) in the transformer's latent layout, drawn from `generator` on the CPU."""

    @abstractmethod
    def sigmas(self, num_steps: int, cond: Conditioning) -> torch.Tensor:
        """The σ schedule of a `num_steps` rollout: float32, length num_steps + 1, decreasing from ~1 to 0."""

    @abstractmethod
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Predicted velocity at noisy latents `x` and per-sample noise levels `sigma` ([B])."""

    @abstractmethod
    def decode(self, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Clean latents → images [B, 3, H, W] in [0, 1] (float32, CPU); no gradients."""

    def save_lora(self, out_dir: str | Path, lora_state: dict[str, torch.Tensor]) -> None:
        """Write the LoRA in diffusers format (`pytorch_lora_weights.safetensors`, loadable with load_lora_weights).

        The adapter's config (rank, alpha, targets) goes into the file's metadata, so loaders apply the same
        alpha/rank scale as training did.
        """
        meta = None
        peft_config = getattr(self.transformer, "peft_config", {})
        if "default" in peft_config:
            meta = peft_config["default"].to_dict()
            meta = {k: sorted(v) if isinstance(v, set) else v for k, v in meta.items()}
        type(self.pipeline).save_lora_weights(
            save_directory=str(out_dir),
            transformer_lora_layers=lora_state,
            safe_serialization=True,
            transformer_lora_adapter_metadata=meta,
        )

    def save_merged(self, out_dir: str | Path, lora_state: dict[str, torch.Tensor] | None = None) -> None:
        """Save a full pipeline with a LoRA (default: the trainable adapter) fused into the base weights (reloads the
        base: 2× memory)."""
        import tempfile

        from firm.rl.lora import adapter_state

        with tempfile.TemporaryDirectory(prefix="firm-rl-merge-") as tmp:
            self.save_lora(tmp, lora_state if lora_state is not None else adapter_state(self.transformer))
            pipe = self.load_base_pipeline()
            pipe.load_lora_weights(tmp)
            pipe.fuse_lora()
            pipe.unload_lora_weights()
            pipe.save_pretrained(str(out_dir))

    def load_base_pipeline(self) -> Any:
        """A fresh copy of the base pipeline (no LoRA), from where this policy was loaded."""
        from firm.rl.policies.pretrained import absent_components

        return type(self.pipeline).from_pretrained(
            self.source, dtype=self.dtype, **absent_components(self.source)
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the transformer's forward: torch autocast to `dtype` on the policy's device
        (`torch.autocast("cpu", dtype=torch.bfloat16)` for a bf16 policy on the CPU), a no-op for float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def eval_mode(self) -> None:
        """Disable dropout everywhere (freshly built tiny models are in train mode)."""
        for comp in self.pipeline.components.values():
            if isinstance(comp, torch.nn.Module):
                comp.eval()
