"""Qwen-Image-Edit(-2509) editing policy (diffusers `QwenImageEditPlusPipeline`), CFG-free as in FIRM's RL.

The pipeline's own `__call__` resizes the condition image for the VL encoder to a 384² area (`CONDITION_IMAGE_SIZE`)
and the VAE copy to a 1024² area, both with `calculate_dimensions` (the aspect ratio kept, each side rounded to a
multiple of 32) and the image processor's LANCZOS resize, and drops a fixed 64 prompt-template tokens from the encoder
output. This adapter does not go through `__call__`, but resizes the VL-encoder image with the same function and
resize; its area is `policy.condition_pixels` (default the pipeline's 384², a setting because tiny test encoders need
far fewer pixels). A square source thus reaches the VL encoder at 384², which the Qwen2.5-VL processor rounds to a
multiple of its 28-pixel patches, 392². The dropped-token count (`policy.prompt_template_drop`, None = the pipeline's
own) is a setting too, and the source image is VAE-encoded at the rollout resolution, as the official trainer does.
Latents use the pipeline's packed layout [B, (h/2)(w/2), 4·C]; the source latents are appended to the sequence and the
prediction for them is discarded.
"""

from __future__ import annotations

from typing import Any

import torch

from firm.errors import InputError
from firm.rl.policies.base import Conditioning, DiffusionPolicy, dynamic_shift_sigmas
from firm.rl.policies.pretrained import resolve_pretrained, torch_dtype
from firm.rl.policies.qwen_image import qwen_decode, qwen_image_latents


class QwenEditPolicy(DiffusionPolicy):
    task = "edit"

    def __init__(
        self,
        pipeline: Any,
        *,
        resolution: int,
        max_sequence_length: int,
        condition_pixels: int,
        device: torch.device,
        source: str = "",
    ):
        self.adopt(pipeline, device=device, resolution=resolution, source=source)
        self.max_sequence_length = max_sequence_length
        self.condition_pixels = condition_pixels
        self.channels = pipeline.latent_channels

    @staticmethod
    def load_pipeline(path: str, dtype: torch.dtype) -> Any:
        """Assemble the pipeline from its saved components. The saved Qwen-VL processor class needs torchvision
        (or, for tiny models, is FIRM's image-only subclass, which `from_pretrained`'s class check rejects), so the
        components are loaded one by one and the image-only processor is passed in."""
        from diffusers import (
            AutoencoderKLQwenImage,
            FlowMatchEulerDiscreteScheduler,
            QwenImageEditPlusPipeline,
            QwenImageTransformer2DModel,
        )
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        from firm.models.processors import FirmQwen2_5_VLProcessor

        return QwenImageEditPlusPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
            vae=AutoencoderKLQwenImage.from_pretrained(path, subfolder="vae", dtype=dtype),
            text_encoder=Qwen2_5_VLForConditionalGeneration.from_pretrained(
                path, subfolder="text_encoder", dtype=dtype
            ),
            tokenizer=AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
            processor=FirmQwen2_5_VLProcessor.from_pretrained(path, subfolder="processor"),
            transformer=QwenImageTransformer2DModel.from_pretrained(
                path, subfolder="transformer", dtype=dtype
            ),
        )

    def load_base_pipeline(self) -> Any:
        return self.load_pipeline(self.source, self.dtype)

    @classmethod
    def from_pretrained(cls, cfg: Any, device: torch.device) -> QwenEditPolicy:
        path = resolve_pretrained(cfg.uri)
        pipe = cls.load_pipeline(path, torch_dtype(cfg.dtype)).to(device)
        pipe.set_progress_bar_config(disable=True)
        if cfg.prompt_template_drop is not None:
            pipe.prompt_template_encode_start_idx = cfg.prompt_template_drop
        if cfg.gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        return cls(
            pipe,
            resolution=cfg.resolution,
            max_sequence_length=cfg.max_sequence_length,
            condition_pixels=cfg.condition_pixels,
            device=device,
            source=path,
        )

    def _latent_side(self) -> int:
        return 2 * (self.resolution // (self.vae_scale * 2))

    def _pack(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        return self.pipeline._pack_latents(z, b, c, h, w)

    @torch.no_grad()
    def encode(self, prompts: list[str], sources: list[Any] | None = None) -> Conditioning:
        from firm.rl.rewards import to_pil

        if not sources or len(sources) != len(prompts) or any(s is None for s in sources):
            raise InputError("Qwen-Image-Edit needs one source image per instruction")
        pipe = self.pipeline
        embeds, masks, latents = [], [], []
        for prompt, src in zip(prompts, sources, strict=True):
            img = to_pil(src) if isinstance(src, torch.Tensor) else src
            pe, _ = pipe._get_qwen_prompt_embeds(
                [prompt], [self.condition_image(img)], device=self.device, dtype=self.dtype
            )
            pe = pe[:, : self.max_sequence_length]
            pad = self.max_sequence_length - pe.shape[1]
            mask = torch.cat([torch.ones(pe.shape[1]), torch.zeros(pad)]).to(self.device, torch.long)
            embeds.append(torch.nn.functional.pad(pe, (0, 0, 0, pad)))
            masks.append(mask[None])
            latents.append(self.image_latents([img]))
        return Conditioning(
            {
                "prompt_embeds": torch.cat(embeds),
                "prompt_mask": torch.cat(masks),
                "image_latents": torch.cat(latents),
            }
        )

    def condition_image(self, image: Any) -> Any:
        """The PIL image the VL encoder sees: `image` resized to about `condition_pixels` pixels keeping its aspect
        ratio, each side a multiple of 32 (`QwenImageEditPlusPipeline.__call__`: `calculate_dimensions` and
        `image_processor.resize`, LANCZOS)."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

        width, height = calculate_dimensions(self.condition_pixels, image.width / image.height)
        return self.pipeline.image_processor.resize(image, height, width)

    def image_latents(self, images: list[Any]) -> torch.Tensor:
        """Packed, normalised VAE latents of PIL images at the rollout resolution: the source-image conditioning
        of `encode`, and the x0 of an image in the layout `velocity` and `decode` use."""
        return qwen_image_latents(self, images)

    def initial_noise(self, n: int, generator: torch.Generator, cond: Conditioning) -> torch.Tensor:
        side = self._latent_side()
        z = torch.randn((n, self.channels, side, side), generator=generator)
        return self._pack(z).to(self.device, self.dtype)

    def sigmas(self, num_steps: int, cond: Conditioning) -> torch.Tensor:
        return dynamic_shift_sigmas(self.pipeline.scheduler, (self._latent_side() // 2) ** 2, num_steps)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        side = self._latent_side() // 2
        img_lat = cond.tensors["image_latents"]
        shapes = [[(1, side, side), (1, side, side)]] * x.shape[0]
        with self.autocast():  # float32 latents and σ, as the official trainer passes them (`timestep=t`)
            out = self.transformer(
                hidden_states=torch.cat([x.float(), img_lat.float()], dim=1),
                timestep=sigma.to(x.device, torch.float32).expand(x.shape[0]),
                encoder_hidden_states=cond.tensors["prompt_embeds"],
                encoder_hidden_states_mask=cond.tensors["prompt_mask"],
                img_shapes=shapes,
                return_dict=False,
            )[0]
        return out[:, : x.shape[1]]

    def decode(self, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return qwen_decode(self, x0)
