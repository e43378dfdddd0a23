"""FLUX.2-klein text-to-image policy (diffusers `Flux2KleinPipeline`), CFG-free as FIRM-Reward's klein trainer runs it.

Conditioning: the prompt rendered with the Qwen3 chat template (one user message, generation prompt, thinking off),
run through the Qwen3 text encoder, and the hidden states of `policy.options.text_encoder_out_layers` stacked along
the feature axis; per-token 4-axis position ids (T, H, W, L). Latents use the pipeline's layout: the VAE latent is
patchified 2×2 into 4·C channels, normalised by the VAE's batch-norm statistics and flattened to [B, h·w, 4·C].

Parity notes (each default checked against the official code):
- Text encoder layers (9, 18, 27) and 512 tokens: FIRM-Reward `generation/config/nft_flux2_klein.py`
  (`text_encoder_out_layers`, `max_sequence_length`) passed to `Flux2KleinPipeline.encode_prompt` in
  `generation/scripts/train_nft_flux2_klein.py` (`main`); the same as the diffusers defaults.
- No classifier-free guidance: `sample.guidance_scale = train_guidance_scale = 1.0` in `nft_flux2_klein.py`, so
  `flux_predict` runs the conditional branch only. The config also sets `train_embedded_guidance = 1.0`, which
  `flux_predict` passes as `guidance=`; FLUX.2-klein's transformer has no guidance embedder (`guidance_embeds=false`),
  so the value is ignored there (`Flux2TimestepGuidanceEmbeddings.forward`) and the diffusers pipeline passes
  `guidance=None`. FIRM leaves `policy.options.embedded_guidance` unset and refuses a value for a transformer without
  a guidance embedder, instead of ignoring it silently. True CFG (`grpo.guidance_scale > 1`) is refused for a
  step-distilled klein (`is_distilled=true`), whose pipeline ignores guidance (`Flux2KleinPipeline.check_inputs`),
  when the recipe's validation can read that from a local pipeline directory (a Hub id or an s3:// URI is not
  fetched just to validate); the undistilled klein base takes CFG as the diffusers pipeline does.
- σ schedule: `linspace(1, 1/T, T)` shifted by `mu = compute_empirical_mu(tokens, T)` (`set_flux_timesteps` in
  `train_nft_flux2_klein.py`, `Flux2KleinPipeline.__call__` step 6); σ enters the transformer as `timestep / 1000`.
- Decoding: unpack, undo the batch-norm normalisation with `bn.running_mean` / `sqrt(running_var + eps)`, unpatchify,
  VAE decode (`decode_flux_latents` in `train_nft_flux2_klein.py`, `Flux2KleinPipeline.__call__`).
- LoRA targets: `lora.target_modules` of `nft_flux2_klein.py`, resolved as `resolve_lora_target_modules` does
  (suffix match, fnmatch for the glob, only modules with weights): the double-stream blocks' attention projections
  and feed-forwards (`ff.*`, `ff_context.*`), the single-stream blocks' fused `attn.to_qkv_mlp_proj` and
  `attn.to_out` (see `firm.rl.policies.registry`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from firm.errors import ConfigError
from firm.rl.policies.base import Conditioning, DiffusionPolicy
from firm.rl.policies.pretrained import absent_components, ready_pipeline, resolve_pretrained, torch_dtype


class Flux2KleinOptions(BaseModel):
    """`policy.options` of `kind: flux2_klein`."""

    model_config = ConfigDict(extra="forbid")

    text_encoder_out_layers: tuple[int, ...] = Field(
        (9, 18, 27),
        description="Qwen3 hidden-state layers stacked into the prompt embedding (official and diffusers default: "
        "9, 18, 27; their count × the encoder's hidden size must equal the transformer's joint_attention_dim)",
    )
    embedded_guidance: float | None = Field(
        None,
        ge=0,
        description="guidance value for a transformer with a guidance embedder; FLUX.2-klein has none (null)",
    )

    @field_validator("text_encoder_out_layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(i < 0 for i in v):
            raise ValueError(f"expected a non-empty list of hidden-state layer indices ≥ 0, got {list(v)}")
        return v

    def check_run(self, cfg: Any) -> None:
        """Settings of the rest of the run this family does not support (called by `RLConfig` validation)."""
        if cfg.algorithm != "grpo" or cfg.grpo.guidance_scale == 1.0:
            return
        index = _local_model_index(cfg.policy.uri)
        if index.get("is_distilled"):
            raise ValueError(
                f"grpo.guidance_scale={cfg.grpo.guidance_scale:g}: {cfg.policy.uri} is a step-distilled FLUX.2-klein "
                "(is_distilled=true), whose pipeline ignores classifier-free guidance; set grpo.guidance_scale=1"
            )


def _local_model_index(uri: str) -> dict[str, Any]:
    """model_index.json of a local pipeline directory ({} for HF ids and object-store URIs: not fetched to validate)."""
    p = Path(uri.removeprefix("file://")).expanduser() / "model_index.json"
    if "://" in uri.removeprefix("file://") or not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


class Flux2KleinPolicy(DiffusionPolicy):
    task = "gen"

    def __init__(
        self,
        pipeline: Any,
        *,
        resolution: int,
        max_sequence_length: int,
        options: Flux2KleinOptions,
        device: torch.device,
        source: str = "",
    ):
        self.adopt(pipeline, device=device, resolution=resolution, source=source)
        self.max_sequence_length = max_sequence_length
        self.options = options
        self.channels = self.transformer.config.in_channels  # 4 × the VAE's latent channels (2×2 patches)
        self._ids: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, cfg: Any, device: torch.device) -> Flux2KleinPolicy:
        from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel
        from transformers import AutoConfig

        opts: Flux2KleinOptions = cfg.family_options()
        path = resolve_pretrained(cfg.uri)
        # the options must fit the checkpoint: checked on its configs, before the weights are loaded
        tcfg = Flux2Transformer2DModel.load_config(path, subfolder="transformer")
        if opts.embedded_guidance is not None and not tcfg.get("guidance_embeds", True):
            raise ConfigError(
                f"policy.options.embedded_guidance={opts.embedded_guidance:g}: the transformer of {path} has no "
                "guidance embedder (guidance_embeds=false, as FLUX.2-klein), so the value would be ignored; leave "
                "policy.options.embedded_guidance unset"
            )
        ecfg = AutoConfig.from_pretrained(path, subfolder="text_encoder")
        layers, n_hidden = opts.text_encoder_out_layers, ecfg.num_hidden_layers
        if max(layers) > n_hidden:
            raise ConfigError(
                f"policy.options.text_encoder_out_layers={list(layers)}: the text encoder of {path} has "
                f"{n_hidden} layers (hidden-state indices 0–{n_hidden})"
            )
        width = len(layers) * ecfg.hidden_size
        if width != tcfg["joint_attention_dim"]:
            raise ConfigError(
                f"policy.options.text_encoder_out_layers={list(layers)}: {len(layers)} layers × hidden size "
                f"{ecfg.hidden_size} = {width}, but the transformer of {path} reads {tcfg['joint_attention_dim']} "
                "features per text token"
            )
        pipe = ready_pipeline(
            Flux2KleinPipeline.from_pretrained(path, dtype=torch_dtype(cfg.dtype), **absent_components(path)),
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
        """Side of the patchified latent (half the VAE latent's)."""
        return self.resolution // (self.vae_scale * 2)

    def _latent_ids(self) -> torch.Tensor:
        """(T, H, W, L) ids of the h·w image tokens in row-major order (`Flux2KleinPipeline._prepare_latent_ids`)."""
        if self._ids is None:
            side = self._latent_side()
            self._ids = torch.cartesian_prod(
                torch.arange(1), torch.arange(side), torch.arange(side), torch.arange(1)
            ).to(self.device)
        return self._ids

    # ------------------------------------------------------------------ DiffusionPolicy
    @torch.no_grad()
    def encode(self, prompts: list[str], sources: list[Any] | None = None) -> Conditioning:
        pe, text_ids = self.pipeline.encode_prompt(
            prompt=prompts,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=tuple(self.options.text_encoder_out_layers),
        )
        return Conditioning({"prompt_embeds": pe.to(self.dtype), "text_ids": text_ids.to(self.device)})

    def initial_noise(self, n: int, generator: torch.Generator, cond: Conditioning) -> torch.Tensor:
        side = self._latent_side()
        z = torch.randn((n, self.channels, side, side), generator=generator)
        return self.pipeline._pack_latents(z).to(self.device, self.dtype)

    def sigmas(self, num_steps: int, cond: Conditioning) -> torch.Tensor:
        import numpy as np
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        sched = self.pipeline.scheduler
        sigmas = None if sched.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_steps, num_steps)
        mu = compute_empirical_mu(self._latent_side() ** 2, num_steps)
        sched.set_timesteps(num_steps, device="cpu", sigmas=sigmas, mu=mu)
        return sched.sigmas.detach().float().cpu().clone()

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b = x.shape[0]
        g = self.options.embedded_guidance
        guidance = None if g is None else torch.full((b,), float(g), device=x.device, dtype=torch.float32)
        # float32 latents and σ (`flux_predict`'s `timesteps.float() / 1000` on float32 x_t): the transformer casts
        # the timestep to the latents' dtype, so both stay float32 up to the sinusoidal embedding
        with self.autocast():
            out = self.transformer(
                hidden_states=x.float(),
                timestep=sigma.to(x.device, torch.float32).expand(b),
                guidance=guidance,
                encoder_hidden_states=cond.tensors["prompt_embeds"],
                txt_ids=cond.tensors["text_ids"],
                img_ids=self._latent_ids(),
                return_dict=False,
            )[0]
        return out[:, : x.shape[1]]

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        pipe, vae = self.pipeline, self.pipeline.vae
        b, _, c = x0.shape
        side = self._latent_side()
        z = x0.permute(0, 2, 1).reshape(b, c, side, side).to(vae.dtype)  # inverse of _pack_latents
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z)
        z = pipe._unpatchify_latents(z * std + mean)
        img = vae.decode(z, return_dict=False)[0]
        return (img.float() / 2 + 0.5).clamp(0, 1).cpu()
