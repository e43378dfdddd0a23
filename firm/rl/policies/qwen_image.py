"""Qwen-Image text-to-image policy (diffusers `QwenImagePipeline`), with the official trainer's true CFG inside.

Conditioning traps, as family options (`policy.options`, `QwenImageOptions`) with the official defaults:

- Guidance. Qwen-Image is not guidance-distilled (`transformer.config.guidance_embeds` is false; a checkpoint that
  has a guidance embedding is refused): it is steered by true classifier-free guidance against a negative prompt, and
  the official trainer applies it in its rollouts *and* in every training prediction (old, current, reference), each
  guided prediction rescaled per token to the norm of the conditional one. So here it is part of the policy's velocity:
  `true_cfg_scale` (4.0), `negative_prompt` ("") and `cfg_renorm` (true); 1.0 turns guidance off (half the
  transformer cost). The trainer-level CFG (`grpo.guidance_scale`) would guide twice and is refused for this family.
- Text-encoder template. The prompt goes through the pipeline's Qwen2.5-VL system template, whose first
  `prompt_template_drop` hidden states (34 with the real tokenizer) are dropped; `auto` counts the template prefix's
  tokens with the loaded tokenizer (tiny test tokenizers split it differently). `policy.max_sequence_length` caps the
  kept tokens (official 512); prompts are padded to it with a mask, which the transformer's joint attention honours.
- Image packing. Latents are the pipeline's packed layout [B, (h/2)(w/2), 4·16] (2×2 patches), `img_shapes` one
  (1, h/2, w/2) frame per sample; σ is passed as the timestep (the pipeline's t/1000); the σ schedule is the
  pipeline's `linspace(1, 1/N, N)` with the dynamic shift μ of the image sequence length; decoding un-normalises
  with the VAE's `latents_mean` / `latents_std` and takes the single frame.

Parity, checked against the public FIRM-Reward repository (VisionXLab/FIRM-Reward):
- `generation/config/nft_qwen_image.py` (`_build_base_config`): `sample.guidance_scale` = `eval_guidance_scale` = 4.0,
  LoRA rank 64 / alpha 128 on the `attn.*` projections plus `img_mlp.net.0.proj`, `img_mlp.net.2`,
  `txt_mlp.net.0.proj`, `txt_mlp.net.2` (the registry's `qwen_image` targets), resolution 512.
- `generation/scripts/train_nft_qwen_image.py`: `qwenimage_cfg_predict_batch` (uncond + s·(cond − uncond), then
  × ‖cond‖/‖cfg‖ over the last dim, norms clamped at 1e-6; σ = timestep/1000 as the transformer's timestep) is used for
  the old, current and reference predictions; rollouts and evaluation pass `negative_prompt=[""]`.
- `generation/flow_grpo/diffusers_patch/qwenimage_pipeline_with_logprob.py` (`pipeline_with_logprob`): prompts are
  encoded with the pipeline's `encode_prompt` (its template and drop index 34, `max_sequence_length` 512); sigmas
  `np.linspace(1.0, 1/N, N)` with μ = `calculate_shift(image_seq_len, …)` from the scheduler config.
- diffusers 0.42.1 `pipelines/qwenimage/pipeline_qwenimage.py` (`_get_qwen_prompt_embeds`, `_pack_latents`,
  `_unpack_latents`, `__call__`'s decode): the same template, packing and VAE un-normalisation.
Deliberate difference: the official trainer's rollouts are SDE steps (noise level 1.2) in a random 2-step window of
the first half of 50 steps and it trains on that window's timesteps only; FIRM's NFT rolls out with its deterministic
solver and trains on int(0.99·T) timesteps drawn per sample (`sampling.*`, `nft.*`), as for the other families.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from firm.errors import ConfigError
from firm.rl.policies.base import Conditioning, DiffusionPolicy, dynamic_shift_sigmas
from firm.rl.policies.pretrained import resolve_pretrained, torch_dtype


class QwenImageOptions(BaseModel):
    """Qwen-Image's conditioning options (`policy.options`), with the official trainer's defaults."""

    model_config = ConfigDict(extra="forbid")

    true_cfg_scale: float = Field(
        4.0,
        ge=1.0,
        description="true classifier-free guidance inside the policy velocity, in rollouts and training (official "
        "4.0; 1.0 = off)",
    )
    negative_prompt: str = Field("", description="the unconditional prompt of true CFG (official: empty)")
    cfg_renorm: bool = Field(
        True, description="rescale each guided token to the norm of the conditional prediction (official)"
    )
    prompt_template_drop: int | Literal["auto"] = Field(
        34,
        description="hidden states of the Qwen2.5-VL system template dropped before the prompt (the pipeline's 34); "
        "auto = the template prefix's token count with the loaded tokenizer",
    )

    def check_run(self, cfg: Any) -> None:
        """Constraints on the rest of the run (`RLConfig` validation)."""
        check_common_run(cfg, "policy.options.true_cfg_scale")


def check_common_run(cfg: Any, cfg_option: str) -> None:
    """What qwen_image and z_image share: guidance lives in the policy, the side fits the VAE × 2×2 patches."""
    if cfg.algorithm == "grpo" and cfg.grpo.guidance_scale != 1.0:
        raise ValueError(
            f"grpo.guidance_scale={cfg.grpo.guidance_scale:g}: policy.kind={cfg.policy.kind} does not take the "
            f"trainer's classifier-free guidance; its guidance is {cfg_option} (applied in rollouts and training "
            f"alike), so set grpo.guidance_scale=1.0"
        )
    if cfg.policy.resolution % 16:
        raise ValueError(
            f"policy.resolution={cfg.policy.resolution}: policy.kind={cfg.policy.kind} needs a multiple of 16 "
            "(8× VAE downsampling, 2×2 latent patches)"
        )
    if cfg.policy.prompt_template_drop is not None:
        raise ValueError(
            f"policy.prompt_template_drop={cfg.policy.prompt_template_drop}: that setting is Qwen-Image-Edit's; "
            f"policy.kind={cfg.policy.kind} takes its text-encoder settings from policy.options"
        )


def template_prefix_tokens(tokenizer: Any, template: str) -> int:
    """How many tokens the part of `template` before the prompt placeholder `{}` tokenizes to."""
    return len(tokenizer(template.split("{}")[0]).input_ids)


class QwenImagePolicy(DiffusionPolicy):
    task = "gen"

    def __init__(
        self,
        pipeline: Any,
        *,
        resolution: int,
        max_sequence_length: int,
        options: QwenImageOptions,
        device: torch.device,
        source: str = "",
    ):
        self.adopt(pipeline, device=device, resolution=resolution, source=source)
        self.max_sequence_length = max_sequence_length
        self.options = options
        self.channels = self.transformer.config.in_channels // 4
        self._negative: Conditioning | None = None

    @staticmethod
    def load_pipeline(path: str, dtype: torch.dtype) -> Any:
        from diffusers import QwenImagePipeline

        return QwenImagePipeline.from_pretrained(path, dtype=dtype)

    def load_base_pipeline(self) -> Any:
        return self.load_pipeline(self.source, self.dtype)

    @classmethod
    def from_pretrained(cls, cfg: Any, device: torch.device) -> QwenImagePolicy:
        opts: QwenImageOptions = cfg.family_options()
        path = resolve_pretrained(cfg.uri)
        pipe = cls.load_pipeline(path, torch_dtype(cfg.dtype)).to(device)
        if pipe.transformer.config.get("guidance_embeds", False):
            raise ConfigError(
                f"policy.uri={cfg.uri}: a guidance-distilled Qwen-Image transformer (guidance_embeds=true); "
                "policy.kind=qwen_image trains the true-CFG model (policy.options.true_cfg_scale)"
            )
        pipe.set_progress_bar_config(disable=True)
        drop = opts.prompt_template_drop
        if drop == "auto":
            drop = template_prefix_tokens(pipe.tokenizer, pipe.prompt_template_encode)
        pipe.prompt_template_encode_start_idx = drop
        if cfg.gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        return cls(
            pipe,
            resolution=cfg.resolution,
            max_sequence_length=cfg.max_sequence_length,
            options=opts,
            device=device,
            source=path,
        )

    # ---------------------------------------------------------------- conditioning
    @property
    def guided(self) -> bool:
        return self.options.true_cfg_scale != 1.0

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings [B, L, D] and mask [B, L], padded (or cut) to `max_sequence_length`."""
        pe, mask = self.pipeline._get_qwen_prompt_embeds(prompts, device=self.device, dtype=self.dtype)
        n = self.max_sequence_length
        pe, mask = pe[:, :n], mask[:, :n].to(torch.long)
        pad = n - pe.shape[1]
        return torch.nn.functional.pad(pe, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad))

    @torch.no_grad()
    def encode(self, prompts: list[str], sources: list[Any] | None = None) -> Conditioning:
        pe, mask = self._embed(prompts)
        tensors = {"prompt_embeds": pe, "prompt_mask": mask}
        if self.guided:
            if self._negative is None:  # the same for every prompt: encoded once
                ne, nm = self._embed([self.options.negative_prompt])
                self._negative = Conditioning({"neg_embeds": ne, "neg_mask": nm})
            tensors.update(self._negative.repeat(len(prompts)).tensors)
        return Conditioning(tensors)

    # ---------------------------------------------------------------- latents and schedule
    def _latent_side(self) -> int:
        return 2 * (self.resolution // (self.vae_scale * 2))

    def initial_noise(self, n: int, generator: torch.Generator, cond: Conditioning) -> torch.Tensor:
        side = self._latent_side()
        z = torch.randn((n, self.channels, side, side), generator=generator)
        return self.pipeline._pack_latents(z, n, self.channels, side, side).to(self.device, self.dtype)

    def sigmas(self, num_steps: int, cond: Conditioning) -> torch.Tensor:
        return dynamic_shift_sigmas(self.pipeline.scheduler, (self._latent_side() // 2) ** 2, num_steps)

    # ---------------------------------------------------------------- the model
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, c = x.shape[0], cond.tensors
        t = sigma.to(x.device, torch.float32).expand(b)  # float32, as the official trainer passes it
        embeds, mask = c["prompt_embeds"], c["prompt_mask"]
        if self.guided:  # conditional and unconditional in one batch, as the official rollouts do
            x, t = torch.cat([x, x]), torch.cat([t, t])
            embeds, mask = torch.cat([embeds, c["neg_embeds"]]), torch.cat([mask, c["neg_mask"]])
        side = self._latent_side() // 2
        with self.autocast():
            out = self.transformer(
                hidden_states=x.float(),
                timestep=t,
                encoder_hidden_states=embeds,
                encoder_hidden_states_mask=mask,
                img_shapes=[[(1, side, side)]] * x.shape[0],
                return_dict=False,
            )[0]
        if not self.guided:
            return out
        cond_v, uncond_v = out[:b], out[b:]
        v = uncond_v + self.options.true_cfg_scale * (cond_v - uncond_v)
        if self.options.cfg_renorm:
            scale = cond_v.norm(dim=-1, keepdim=True).clamp_min(1e-6) / v.norm(
                dim=-1, keepdim=True
            ).clamp_min(1e-6)
            v = v * scale
        return v

    def image_latents(self, images: list[Any]) -> torch.Tensor:
        return qwen_image_latents(self, images)

    def decode(self, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return qwen_decode(self, x0)


# The Qwen-Image VAE's latent layout, shared by the Qwen-Image and Qwen-Image-Edit adapters: one frame of
# `AutoencoderKLQwenImage` latents, normalised with the config's `latents_mean` / `latents_std`, packed 2 × 2.


def _latent_stats(vae: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1) + (1,) * (z.ndim - 2)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(z)
    std = torch.tensor(vae.config.latents_std).view(shape).to(z)
    return mean, std


@torch.no_grad()
def qwen_image_latents(policy: DiffusionPolicy, images: list[Any]) -> torch.Tensor:
    """Packed x0 latents of PIL images at the policy's rollout resolution: the VAE posterior's mode, normalised as
    `qwen_decode` undoes it (an editing policy's source-image conditioning uses the same)."""
    pipe, vae, res = policy.pipeline, policy.pipeline.vae, policy.resolution
    x = torch.cat([pipe.image_processor.preprocess(im.resize((res, res)), res, res) for im in images])
    z = vae.encode(x.unsqueeze(2).to(policy.device, vae.dtype)).latent_dist.mode()[:, :, 0]
    mean, std = _latent_stats(vae, z)
    z = ((z - mean) / std).to(policy.dtype)
    b, c, h, w = z.shape
    return pipe._pack_latents(z, b, c, h, w)


@torch.no_grad()
def qwen_decode(policy: DiffusionPolicy, x0: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (on the CPU) from packed, normalised latents."""
    pipe, vae = policy.pipeline, policy.pipeline.vae
    z = pipe._unpack_latents(x0, policy.resolution, policy.resolution, policy.vae_scale).to(vae.dtype)
    mean, std = _latent_stats(vae, z)
    img = vae.decode(z * std + mean, return_dict=False)[0][:, :, 0]
    return (img.float() / 2 + 0.5).clamp(0, 1).cpu()
