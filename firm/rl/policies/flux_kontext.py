"""FLUX.1-Kontext editing policy (diffusers `FluxKontextPipeline`), as FIRM-Reward's Kontext trainer runs it.

Conditioning: the instruction through CLIP (pooled projection) and T5 (`policy.max_sequence_length` tokens, at most
512), and the source image VAE-encoded at the rollout resolution. Latents use the pipeline's packed layout
[B, (h/2)(w/2), 4·C]; the source latents are appended to the sequence with position ids whose first coordinate is 1
(the target's are 0), and the prediction for them is discarded. FLUX.1-Kontext-dev is guidance-distilled: the
guidance strength is an input of the transformer (`policy.options.guidance_scale`), not classifier-free guidance, so
FIRM's true CFG (`grpo.guidance_scale`) is refused for this family.

Parity notes (each default checked against the official code):
- Embedded guidance 2.5 in rollouts and in every training forward (`guidance=` of the transformer): FIRM-Reward
  `editing/config/kontext_nft_qwen3vl_8b.py` (`sample.guidance_scale = 2.5`) and `editing/scripts/train_nft_kontext.py`
  (`main`: the `guidance` tensor of the old/current/reference predictions); Flow-GRPO's `counting_flux_kontext`
  (`config/grpo.py`) uses the same 2.5 and no true CFG. The diffusers pipeline's own default is 3.5 and it adds true
  CFG only with a negative prompt and `true_cfg_scale > 1` (`FluxKontextPipeline.__call__`).
- T5 prompts of 128 tokens: `compute_text_embeddings(..., max_sequence_length=128)` in `train_nft_kontext.py`
  (`main`, `eval_fn`); the recipe sets `policy.max_sequence_length: 128` (the pipeline's default is 512, its limit).
- Source image at the rollout resolution, no snapping to Kontext's preferred resolutions: `max_area=resolution**2,
  _auto_resize=False` in `train_nft_kontext.py`; the pipeline's default `_auto_resize=True` would resize a square
  source to 1024² (`PREFERRED_KONTEXT_RESOLUTIONS`). The official dataset (`PromptImageDataset.__getitem__`)
  centre-crops to a square and resizes with LANCZOS; so does `firm.rl.data.load_source`, which prepares the sources
  FIRM's trainer hands every editing family at the rollout resolution; a PIL source given to `encode` directly is
  centre-cropped by the pipeline's image processor (`resize_mode="crop"`).
- Source latents: the VAE mode (`retrieve_latents(..., sample_mode="argmax")`), shifted and scaled by the VAE's
  `shift_factor` / `scaling_factor`, packed 2×2, position ids with first coordinate 1
  (`FluxKontextPipeline.prepare_latents`); the target's ids keep 0.
- σ schedule: `linspace(1, 1/T, T)` shifted by `mu = calculate_shift(target tokens, ...)` from the scheduler config
  (`FluxKontextPipeline.__call__`, step 5); timesteps enter the transformer as σ (`timestep / 1000`).
- LoRA targets: the `attn.*` list of `train_nft_kontext.py` (`main`: `target_modules`), which on FLUX.1 adapts every
  projection of the double-stream blocks and `to_q/to_k/to_v` of the single-stream blocks (their `proj_mlp` /
  `proj_out` stay frozen).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from firm.errors import ConfigError, InputError
from firm.rl.policies.base import Conditioning, DiffusionPolicy, dynamic_shift_sigmas
from firm.rl.policies.pretrained import absent_components, ready_pipeline, resolve_pretrained, torch_dtype

T5_MAX_TOKENS = 512  # FluxKontextPipeline.check_inputs refuses more


class FluxKontextOptions(BaseModel):
    """`policy.options` of `kind: flux_kontext`."""

    model_config = ConfigDict(extra="forbid")

    guidance_scale: float | None = Field(
        2.5,
        ge=0,
        description="embedded guidance fed to the guidance-distilled transformer in rollouts and training (official "
        "FIRM-Reward / Flow-GRPO Kontext: 2.5; the diffusers pipeline default: 3.5); null only for a checkpoint "
        "without guidance embedding",
    )

    def check_run(self, cfg: Any) -> None:
        """Settings of the rest of the run this family does not support (called by `RLConfig` validation)."""
        if cfg.algorithm == "grpo" and cfg.grpo.guidance_scale != 1.0:
            raise ValueError(
                f"grpo.guidance_scale={cfg.grpo.guidance_scale:g}: FLUX.1-Kontext is guidance-distilled and is "
                "trained without classifier-free guidance (the official Kontext trainers feed only its embedded "
                f"guidance, policy.options.guidance_scale={self.guidance_scale}); set grpo.guidance_scale=1"
            )


class FluxKontextPolicy(DiffusionPolicy):
    task = "edit"

    def __init__(
        self,
        pipeline: Any,
        *,
        resolution: int,
        max_sequence_length: int,
        options: FluxKontextOptions,
        device: torch.device,
        source: str = "",
    ):
        self.adopt(pipeline, device=device, resolution=resolution, source=source)
        self.max_sequence_length = max_sequence_length
        self.options = options
        self.channels = self.transformer.config.in_channels // 4
        self._ids: dict[int, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, cfg: Any, device: torch.device) -> FluxKontextPolicy:
        from diffusers import FluxKontextPipeline, FluxTransformer2DModel

        opts: FluxKontextOptions = cfg.family_options()
        if cfg.max_sequence_length > T5_MAX_TOKENS:
            raise ConfigError(
                f"policy.max_sequence_length={cfg.max_sequence_length}: FLUX's T5 encoder takes at most "
                f"{T5_MAX_TOKENS} tokens (the official Kontext trainer uses 128)"
            )
        path = resolve_pretrained(cfg.uri)
        # the guidance setting must fit the checkpoint: checked on its config, before the weights are loaded
        embeds = bool(
            FluxTransformer2DModel.load_config(path, subfolder="transformer").get("guidance_embeds")
        )
        if embeds and opts.guidance_scale is None:
            raise ConfigError(
                f"policy.options.guidance_scale=null: the transformer of {path} is guidance-distilled "
                "(guidance_embeds=true) and needs an embedded guidance value (official Kontext trainers: 2.5)"
            )
        if not embeds and opts.guidance_scale is not None:
            raise ConfigError(
                f"policy.options.guidance_scale={opts.guidance_scale:g}: the transformer of {path} has no guidance "
                "embedding (guidance_embeds=false); set policy.options.guidance_scale=null"
            )
        pipe = ready_pipeline(
            FluxKontextPipeline.from_pretrained(
                path, dtype=torch_dtype(cfg.dtype), **absent_components(path)
            ),
            cfg,
            device,
        )
        return cls(
            pipe,
            resolution=cfg.resolution,
            max_sequence_length=cfg.max_sequence_length,
            options=opts,
            device=device,
            source=path,
        )

    # ------------------------------------------------------------------ layout
    def _latent_side(self) -> int:
        """Side of the (unpacked) VAE latent: even, as the pipeline's 2×2 packing needs."""
        return 2 * (self.resolution // (self.vae_scale * 2))

    def _pack(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        return self.pipeline._pack_latents(z, b, c, h, w)

    def _img_ids(self, n_source: int) -> torch.Tensor:
        """Position ids of the target tokens (first coordinate 0) followed by the source tokens' (1)."""
        if n_source not in self._ids:
            half = self._latent_side() // 2
            target = self.pipeline._prepare_latent_image_ids(1, half, half, self.device, self.dtype)
            src_half = math.isqrt(n_source)
            source = self.pipeline._prepare_latent_image_ids(1, src_half, src_half, self.device, self.dtype)
            source[..., 0] = 1
            self._ids[n_source] = torch.cat([target, source], dim=0)
        return self._ids[n_source]

    def _source_pixels(self, src: Any) -> torch.Tensor:
        """A source image ([3, H, W] in [0, 1], or PIL) → [1, 3, R, R] in [−1, 1] at the rollout resolution."""
        from firm.rl.rewards import to_pil

        proc = self.pipeline.image_processor
        r = self.resolution
        if isinstance(src, torch.Tensor):
            return proc.preprocess(to_pil(src), r, r)
        # the official dataset's centre crop
        return proc.preprocess(src.convert("RGB"), r, r, resize_mode="crop")

    # ------------------------------------------------------------------ DiffusionPolicy
    @torch.no_grad()
    def encode(self, prompts: list[str], sources: list[Any] | None = None) -> Conditioning:
        if not sources or len(sources) != len(prompts) or any(s is None for s in sources):
            raise InputError("FLUX.1-Kontext needs one source image per instruction")
        pipe = self.pipeline
        pe, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        vae = pipe.vae
        x = torch.cat([self._source_pixels(s) for s in sources]).to(self.device, vae.dtype)
        z = pipe._encode_vae_image(x, generator=None)  # the VAE mode, shifted and scaled
        return Conditioning(
            {
                "prompt_embeds": pe.to(self.dtype),
                "pooled": pooled.to(self.dtype),
                "image_latents": self._pack(z.to(self.dtype)),
            }
        )

    def initial_noise(self, n: int, generator: torch.Generator, cond: Conditioning) -> torch.Tensor:
        side = self._latent_side()
        z = torch.randn((n, self.channels, side, side), generator=generator)
        return self._pack(z).to(self.device, self.dtype)

    def sigmas(self, num_steps: int, cond: Conditioning) -> torch.Tensor:
        return dynamic_shift_sigmas(self.pipeline.scheduler, (self._latent_side() // 2) ** 2, num_steps)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b = x.shape[0]
        src = cond.tensors["image_latents"]
        g = self.options.guidance_scale
        guidance = None if g is None else torch.full((b,), float(g), device=x.device, dtype=torch.float32)
        txt_ids = torch.zeros(cond.tensors["prompt_embeds"].shape[1], 3, device=x.device, dtype=self.dtype)
        with self.autocast():  # float32 latents and σ, as the official trainer passes them (`timestep=t`)
            out = self.transformer(
                hidden_states=torch.cat([x.float(), src.float()], dim=1),
                timestep=sigma.to(x.device, torch.float32).expand(b),
                guidance=guidance,
                pooled_projections=cond.tensors["pooled"],
                encoder_hidden_states=cond.tensors["prompt_embeds"],
                txt_ids=txt_ids,
                img_ids=self._img_ids(src.shape[1]),
                return_dict=False,
            )[0]
        return out[:, : x.shape[1]]

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        pipe, vae = self.pipeline, self.pipeline.vae
        z = pipe._unpack_latents(x0, self.resolution, self.resolution, self.vae_scale).to(vae.dtype)
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        img = vae.decode(z, return_dict=False)[0]
        return (img.float() / 2 + 0.5).clamp(0, 1).cpu()
