"""Z-Image-Turbo text-to-image policy (diffusers `ZImagePipeline`), CFG-free as the official trainer runs it.

Conditioning traps, as family options (`policy.options`, `ZImageOptions`) with the official defaults:

- Guidance. Z-Image-Turbo is distilled to sample without guidance: the official trainer samples, trains and evaluates
  at guidance 1.0 (no unconditional branch). `cfg_scale` > 1 (for the undistilled Z-Image base, which the same
  pipeline class loads) applies uncond + s·(cond − uncond) inside the policy velocity, in rollouts and training, as
  the official trainer would. Note the diffusers pipeline's own `guidance_scale` means something else
  (cond + g·(cond − uncond), off at 0, the Turbo example uses 0.0): it is not an option here. The trainer-level CFG
  (`grpo.guidance_scale`) is refused for this family.
- Text-encoder template. Each prompt is one user turn of the tokenizer's (Qwen3) chat template with the generation
  prompt and `enable_thinking=True` (no think block), padded to `policy.max_sequence_length` (official 512); the
  embedding is the text encoder's second-to-last hidden state of the unpadded tokens. Prompts are kept padded with a
  mask between steps and unpadded into the per-sample list the transformer takes.
- Timestep and sign. The transformer takes t = 1 − σ and predicts x0 − ε; the velocity here (ε − x0) is its negation.
  Latents are [B, 16, h, w] (the transformer patchifies 2×2 itself, one frame each).
- Schedule. σ = shift·s/(1 + (shift − 1)·s) for s = linspace(1, 0, N+1)[:-1], then 0 (`sigma_shift`, official 3.0;
  None = the saved scheduler's own schedule, as `ZImagePipeline.__call__` computes it). Decoding is the Flux VAE's
  z / scaling_factor + shift_factor.

Parity, checked against the public FIRM-Reward repository (VisionXLab/FIRM-Reward):
- `generation/config/nft_zimage_turbo.py` (`_build_base_config`): `sample.guidance_scale` = `train_guidance_scale` =
  `eval_guidance_scale` = 1.0, `sample.sigma_shift` = `eval_sigma_shift` = 3.0, 8 rollout steps (16 for eval),
  resolution 512, LoRA rank 32 / alpha 32 on `to_q`, `to_k`, `to_v`, `to_out.0`, `w1`, `w2`, `w3` — in diffusers'
  `ZImageTransformer2DModel` those are exactly the modules named `attention.to_q` … `attention.to_out.0` and
  `feed_forward.w1` … `w3` (main layers and both refiners), the registry's `z_image` targets.
- `generation/scripts/train_nft_zimage_turbo.py`: `zimage_cfg_predict_batch` (guided only when the scale is > 1,
  without renormalisation), `sample_zimage_rollout` (the scheduler's `set_timesteps(N, shift=3.0)`).
- DiffSynth-Studio `diffsynth/pipelines/z_image.py` (which the official trainer calls): `ZImageUnit_PromptEmbedder.
  encode_prompt` (chat template with `enable_thinking=True`, `max_sequence_length` 512, `hidden_states[-2]`, masked
  tokens), `model_fn_z_image_turbo` (t = 1000 − timestep into the time embedder, output negated);
  `diffsynth/diffusion/flow_match.py` `set_timesteps_z_image` (the σ formula above).
- diffusers 0.42.1 `pipelines/z_image/pipeline_z_image.py` (`_encode_prompt`, `__call__`): the same template,
  `(1000 − t)/1000` timestep, negated output and VAE scaling.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from firm.rl.policies.base import Conditioning, DiffusionPolicy, dynamic_shift_sigmas
from firm.rl.policies.pretrained import ready_pipeline, resolve_pretrained, torch_dtype
from firm.rl.policies.qwen_image import check_common_run


class ZImageOptions(BaseModel):
    """Z-Image(-Turbo)'s conditioning options (`policy.options`), with the official trainer's defaults."""

    model_config = ConfigDict(extra="forbid")

    cfg_scale: float = Field(
        1.0,
        ge=1.0,
        description="classifier-free guidance inside the policy velocity (official 1.0: Turbo is guidance-distilled; "
        "> 1 only for the undistilled Z-Image base)",
    )
    negative_prompt: str = Field(
        "", description="the unconditional prompt when cfg_scale > 1 (official: empty)"
    )
    sigma_shift: float | None = Field(
        3.0,
        gt=0,
        description="static σ shift of the rollout schedule (official 3.0); null = the saved scheduler's own",
    )

    def check_run(self, cfg: Any) -> None:
        """Constraints on the rest of the run (`RLConfig` validation)."""
        check_common_run(cfg, "policy.options.cfg_scale")


class ZImagePolicy(DiffusionPolicy):
    task = "gen"

    def __init__(
        self,
        pipeline: Any,
        *,
        resolution: int,
        max_sequence_length: int,
        options: ZImageOptions,
        device: torch.device,
        source: str = "",
    ):
        self.adopt(pipeline, device=device, resolution=resolution, source=source)
        self.max_sequence_length = max_sequence_length
        self.options = options
        self.channels = self.transformer.config.in_channels
        self._negative: Conditioning | None = None

    @staticmethod
    def load_pipeline(path: str, dtype: torch.dtype) -> Any:
        from diffusers import ZImagePipeline

        return ZImagePipeline.from_pretrained(path, dtype=dtype)

    def load_base_pipeline(self) -> Any:
        return self.load_pipeline(self.source, self.dtype)

    @classmethod
    def from_pretrained(cls, cfg: Any, device: torch.device) -> ZImagePolicy:
        path = resolve_pretrained(cfg.uri)
        pipe = ready_pipeline(cls.load_pipeline(path, torch_dtype(cfg.dtype)), cfg, device)
        return cls(
            pipe,
            resolution=cfg.resolution,
            max_sequence_length=cfg.max_sequence_length,
            options=cfg.family_options(),
            device=device,
            source=path,
        )

    # ---------------------------------------------------------------- conditioning
    @property
    def guided(self) -> bool:
        return self.options.cfg_scale != 1.0

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's per-prompt embeddings, padded to [B, max_sequence_length, D] with a bool mask."""
        n = self.max_sequence_length
        feats = self.pipeline._encode_prompt(list(prompts), device=self.device, max_sequence_length=n)
        dim = feats[0].shape[-1]
        pe = torch.zeros(len(feats), n, dim, dtype=self.dtype, device=self.device)
        mask = torch.zeros(len(feats), n, dtype=torch.bool, device=self.device)
        for i, f in enumerate(feats):
            pe[i, : f.shape[0]] = f.to(self.dtype)
            mask[i, : f.shape[0]] = True
        return pe, mask

    @torch.no_grad()
    def encode(self, prompts: list[str], sources: list[Any] | None = None) -> Conditioning:
        pe, mask = self._embed(prompts)
        tensors = {"prompt_embeds": pe, "prompt_mask": mask}
        if self.guided:
            if self._negative is None:
                ne, nm = self._embed([self.options.negative_prompt])
                self._negative = Conditioning({"neg_embeds": ne, "neg_mask": nm})
            tensors.update(self._negative.repeat(len(prompts)).tensors)
        return Conditioning(tensors)

    # ---------------------------------------------------------------- latents and schedule
    def _latent_side(self) -> int:
        return 2 * (self.resolution // (self.vae_scale * 2))

    def initial_noise(self, n: int, generator: torch.Generator, cond: Conditioning) -> torch.Tensor:
        side = self._latent_side()
        return torch.randn((n, self.channels, side, side), generator=generator).to(self.device, self.dtype)

    def sigmas(self, num_steps: int, cond: Conditioning) -> torch.Tensor:
        shift = self.options.sigma_shift
        if shift is not None:
            s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
            s = shift * s / (1 + (shift - 1) * s)
            return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).float()
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        return dynamic_shift_sigmas(
            self.pipeline.scheduler,
            (self._latent_side() // 2) ** 2,
            num_steps,
            get_default_z_image_sigmas(num_steps),
        )

    # ---------------------------------------------------------------- the model
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, c = x.shape[0], cond.tensors
        t = (1 - sigma.to(x.device, torch.float32)).expand(b)  # float32, as the pipeline passes it
        embeds, mask = c["prompt_embeds"], c["prompt_mask"]
        if self.guided:
            x, t = torch.cat([x, x]), torch.cat([t, t])
            embeds, mask = torch.cat([embeds, c["neg_embeds"]]), torch.cat([mask, c["neg_mask"]])
        feats = [e[m.bool()] for e, m in zip(embeds, mask, strict=True)]
        with self.autocast():
            out = self.transformer(list(x.unsqueeze(2).unbind(0)), t, feats, return_dict=False)[0]
        v = -torch.stack(out).squeeze(2)
        if not self.guided:
            return v
        cond_v, uncond_v = v[:b], v[b:]
        return uncond_v + self.options.cfg_scale * (cond_v - uncond_v)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        vae = self.pipeline.vae
        z = x0.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        img = vae.decode(z, return_dict=False)[0]
        return (img.float() / 2 + 0.5).clamp(0, 1).cpu()
