"""SD3 / SD3.5 text-to-image policy (diffusers `StableDiffusion3Pipeline`), CFG-free as in FIRM's RL."""

from __future__ import annotations

from typing import Any

import torch

from firm.rl.policies.base import Conditioning, DiffusionPolicy
from firm.rl.policies.pretrained import absent_components, ready_pipeline, resolve_pretrained, torch_dtype


class SD3Policy(DiffusionPolicy):
    task = "gen"

    def __init__(
        self,
        pipeline: Any,
        *,
        resolution: int,
        max_sequence_length: int,
        device: torch.device,
        source: str = "",
    ):
        self.adopt(pipeline, device=device, resolution=resolution, source=source)
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_pretrained(cls, cfg: Any, device: torch.device) -> SD3Policy:
        from diffusers import StableDiffusion3Pipeline

        path = resolve_pretrained(cfg.uri)
        pipe = ready_pipeline(
            StableDiffusion3Pipeline.from_pretrained(
                path, dtype=torch_dtype(cfg.dtype), **absent_components(path)
            ),
            cfg,
            device,
        )
        return cls(
            pipe,
            resolution=cfg.resolution,
            max_sequence_length=cfg.max_sequence_length,
            device=device,
            source=path,
        )

    @torch.no_grad()
    def encode(self, prompts: list[str], sources: list[Any] | None = None) -> Conditioning:
        pe, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return Conditioning({"prompt_embeds": pe.to(self.dtype), "pooled": pooled.to(self.dtype)})

    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale
        return (self.transformer.config.in_channels, side, side)

    def initial_noise(self, n: int, generator: torch.Generator, cond: Conditioning) -> torch.Tensor:
        return torch.randn((n, *self.latent_shape()), generator=generator).to(self.device, self.dtype)

    def sigmas(self, num_steps: int, cond: Conditioning) -> torch.Tensor:
        sched = self.pipeline.scheduler
        sched.set_timesteps(num_steps, device="cpu")
        return sched.sigmas.detach().float().cpu().clone()

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        # timestep = 1000·σ in float32, as the official SD3 trainers pass the scheduler's timesteps; the transformer
        # keeps it float32 up to its sinusoidal embedding (bf16 would be off by up to 2 timestep units)
        t = (sigma.to(x.device, torch.float32) * 1000.0).expand(x.shape[0])
        with self.autocast():
            return self.transformer(
                hidden_states=x.float(),
                encoder_hidden_states=cond.tensors["prompt_embeds"],
                pooled_projections=cond.tensors["pooled"],
                timestep=t,
                return_dict=False,
            )[0]

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        vae = self.pipeline.vae
        z = x0.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        img = vae.decode(z, return_dict=False)[0]
        return (img.float() / 2 + 0.5).clamp(0, 1).cpu()
