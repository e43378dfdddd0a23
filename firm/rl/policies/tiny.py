"""Tiny random diffusion policies built from configs (tests, quickstart, benchmarks).

They use the real diffusers/transformers classes at toy sizes and are saved with `save_pretrained`, so they load
through exactly the same code as the real checkpoints (`StableDiffusion3Pipeline.from_pretrained(dir)`).
Tokenizers are character-level so nothing has to be downloaded.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from firm.rl.policies.tiny_parts import colour_decoder, qwen_colour_decoder, qwen_image_scheduler

_CHARS = string.ascii_lowercase + string.digits + " .,'-!?"


def char_clip_tokenizer(max_length: int = 32) -> Any:
    """A character-level CLIP tokenizer (no merges) over lowercase letters, digits and punctuation."""
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in _CHARS:
        # byte-level BPE marks the end of a word with </w>; keep both forms so every character maps to an id
        for form in (ch, ch + "</w>"):
            vocab.setdefault(form, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_tiny_sd3(
    out_dir: str | Path, *, seed: int = 0, sample_size: int = 8, colour_vae: bool = True
) -> Path:
    """Build and save a tiny SD3.5-style `StableDiffusion3Pipeline` (64 px images ↔ 8×8×16 latents).

    Transformer: 2 layers (SD3.5 dual attention in layer 0, RMS qk-norm), 4 heads × 8; two tiny CLIP text encoders
    with projection; no T5 (`text_encoder_3=None`, which the pipeline supports); a 16-channel `AutoencoderKL` with a
    downsampling factor of 8 whose decoder carries colour (`colour_vae`, see `colour_decoder`), so cheap colour
    rewards are learnable. `sample_size` is the latent side (8 → 64 px, 4 → 32 px).
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    out = Path(out_dir)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=sample_size * 8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    if colour_vae:
        colour_decoder(vae)
    tok = char_clip_tokenizer()
    enc_cfg = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
        "projection_dim": 32,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
        "hidden_act": "gelu",
    }
    # joint_attention_dim (64) = hidden_1 + hidden_2 (32 + 32); pooled (64) = proj_1 + proj_2
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**enc_cfg))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**enc_cfg))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=char_clip_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out


def tiny_qwen_image_core(colour_vae: bool = True, *, scene: bool = False) -> tuple[Any, Any, Any]:
    """The Qwen-Image family's tiny (transformer, VAE, scheduler), random-init from configs: a 2-layer
    `QwenImageTransformer2DModel`, a tiny `AutoencoderKLQwenImage` (8× downsampling, 16 latent channels; with
    `colour_vae`, the `qwen_colour_decoder`) and the dynamic-shift flow-matching scheduler; `scene`: the
    `tiny_scene.scene_qwen_image_core` instead. Shared by the Qwen-Image and Qwen-Image-Edit builders (created in
    this order, so a seed gives the same weights in both)."""
    if scene:
        from firm.rl.policies.tiny_scene import scene_qwen_image_core

        return scene_qwen_image_core()
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16,
        latents_std=[1.0] * 16,
    )
    if colour_vae:
        qwen_colour_decoder(vae)
    return transformer, vae, qwen_image_scheduler()


def build_tiny_qwen_edit(
    out_dir: str | Path, *, seed: int = 0, colour_vae: bool = True, scene: bool = False
) -> Path:
    """Build and save a tiny `QwenImageEditPlusPipeline`: a 2-layer `QwenImageTransformer2DModel`, a tiny
    `AutoencoderKLQwenImage` (8× downsampling, 16 latent channels) and a tiny Qwen2.5-VL text encoder with an offline
    byte-level BPE tokenizer and the image-only processor (reload with `processor=` passed explicitly — the
    `QwenEditPolicy` loader does that). `scene`: the transformer and VAE of `tiny_scene.scene_qwen_image_core`
    instead (a colour autoencoder whose images a synthetic-data critic can read; the quickstart's policy)."""
    import torch
    from diffusers import QwenImageEditPlusPipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from firm.models.processors import QWEN_VL_CHAT_TEMPLATE, FirmQwen2_5_VLProcessor, image_processor
    from firm.models.tiny import SPECIAL_TOKENS, train_tokenizer

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = train_tokenizer(640)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_config = {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    cfg = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    processor = FirmQwen2_5_VLProcessor(
        image_processor=image_processor(min_pixels=56 * 56, max_pixels=56 * 56),
        tokenizer=tok,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    transformer, vae, scheduler = tiny_qwen_image_core(colour_vae, scene=scene)
    pipe = QwenImageEditPlusPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        processor=processor,
        transformer=transformer,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out


TINY_GEN_PROMPTS = [
    "a red apple on a table",
    "a blue sky over the sea",
    "a green field at noon",
    "a dark street at night",
    "a yellow flower in a pot",
    "a white cat on a sofa",
    "an orange sunset over hills",
    "a black dog in the snow",
]


def write_prompts(path: str | Path, prompts: list[str] | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(x + "\n" for x in (prompts or TINY_GEN_PROMPTS)))
    return p


TINY_EDITS = [
    ("make the sky red", (40, 90, 200)),
    ("turn the wall white", (120, 120, 120)),
    ("make the grass brighter", (30, 140, 40)),
    ("paint the door yellow", (90, 50, 20)),
]


def write_edit_prompts(path: str | Path, size: int = 32) -> Path:
    """An editing prompt file (`.jsonl`, instruction + source image path) with small solid-colour source images."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (instruction, rgb) in enumerate(TINY_EDITS):
        img = p.parent / f"source-{i}.png"
        Image.new("RGB", (size, size), rgb).save(img)
        lines.append(json.dumps({"instruction": instruction, "image": img.name}))
    p.write_text("\n".join(lines) + "\n")
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m firm.rl.policies.tiny KIND OUT_DIR [--prompts FILE] [--sample-size N]`: build a tiny policy of
    any registered family (and a small prompt file: .txt for text-to-image, .jsonl with source images for editing)."""
    import argparse
    import inspect

    from firm.rl.policies.registry import FAMILIES, family, tiny_builder

    ap = argparse.ArgumentParser(prog="python -m firm.rl.policies.tiny")
    ap.add_argument("kind", choices=list(FAMILIES))
    ap.add_argument("out_dir")
    ap.add_argument("--prompts", default=None, help="also write a small prompt file here")
    ap.add_argument(
        "--sample-size",
        type=int,
        default=4,
        help="latent side where the family takes one (4 → 32 px, 8 → 64 px)",
    )
    args = ap.parse_args(argv)
    from firm.logs import quiet_libraries

    quiet_libraries()  # e.g. diffusers' "text_encoder_3=None … cannot be saved": tiny policies have no T5
    build = tiny_builder(args.kind)
    kw = {"sample_size": args.sample_size} if "sample_size" in inspect.signature(build).parameters else {}
    build(args.out_dir, **kw)
    if args.prompts:
        if family(args.kind).task == "edit":
            write_edit_prompts(args.prompts)
        else:
            write_prompts(args.prompts)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
