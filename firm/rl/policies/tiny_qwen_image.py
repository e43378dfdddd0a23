"""Tiny random Qwen-Image and Z-Image(-Turbo) text-to-image pipelines, built from configs (tests, quickstart).

Both use the real diffusers/transformers classes at toy sizes and are saved with `save_pretrained`, so they load
through exactly the code the real checkpoints do (`QwenImagePipeline.from_pretrained(dir)`,
`ZImagePipeline.from_pretrained(dir)`). Tokenizers are the offline byte-level BPE of `firm.models.tiny`; the VAE
decoders are re-initialised so that latents carry colour (`firm.rl.policies.tiny`), which makes a cheap colour reward
learnable. Built by `python -m firm.rl.policies.tiny qwen_image|z_image OUT_DIR [--prompts FILE]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Qwen3's chat template, reduced to plain-text turns: `enable_thinking=False` appends an empty think block after the
# generation prompt, `enable_thinking=True` (what ZImagePipeline passes) appends nothing, as the real template does.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)


def _tokenizer() -> Any:
    from firm.models.tiny import train_tokenizer

    return train_tokenizer(640)


def _qwen_text_config(tok: Any) -> dict[str, Any]:
    from firm.models.tiny import SPECIAL_TOKENS

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }


def build_tiny_qwen_image(
    out_dir: str | Path, *, seed: int = 0, colour_vae: bool = True, scene: bool = False
) -> Path:
    """Build and save a tiny `QwenImagePipeline`: a 2-layer `QwenImageTransformer2DModel` (2 heads × 16, packed 2×2
    latents: in_channels 64), a tiny `AutoencoderKLQwenImage` (8× downsampling, 16 latent channels, colour decoder:
    latent channels 0/1 → R/G) and a tiny Qwen2.5-VL text encoder (hidden 64) with the offline BPE tokenizer. The
    scheduler has Qwen-Image's dynamic shift, rescaled to toy sequence lengths. `scene`: the transformer and VAE of
    `tiny_scene.scene_qwen_image_core` instead (the quickstart's generation policy)."""
    import torch
    from diffusers import (
        QwenImagePipeline,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from firm.rl.policies.tiny import tiny_qwen_image_core

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = _tokenizer()
    text_config = _qwen_text_config(tok)
    text_config["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
    }
    special = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}
    cfg = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config={  # never used for text-to-image, but part of the class
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
            "window_size": 56,
            "fullatt_block_indexes": [0],
        },
        image_token_id=special["<|image_pad|>"],
        video_token_id=special["<|video_pad|>"],
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    transformer, vae, scheduler = tiny_qwen_image_core(colour_vae, scene=scene)
    pipe = QwenImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        transformer=transformer,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out


def build_tiny_z_image(out_dir: str | Path, *, seed: int = 0, colour_vae: bool = True) -> Path:
    """Build and save a tiny `ZImagePipeline`: a `ZImageTransformer2DModel` with 1 noise- and 1 context-refiner block
    and 2 main blocks (dim 32, 2 heads × 16, patch 2, 16 latent channels), a 16-channel `AutoencoderKL` (8×
    downsampling, colour decoder: latent channels 0/1/2 → R/G/B, Flux-VAE scaling/shift) and a tiny `Qwen3Model`
    text encoder (hidden 64; the pipeline reads its second-to-last hidden state) whose tokenizer has a Qwen3-style
    chat template. The scheduler is Z-Image-Turbo's: static shift 3, no dynamic shifting."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    from firm.rl.policies.tiny_parts import colour_decoder

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = _tokenizer()
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    text_encoder = Qwen3Model(Qwen3Config(**_qwen_text_config(tok), head_dim=16, bos_token_id=None)).eval()
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=64,
        axes_dims=[4, 6, 6],
        axes_lens=[256, 64, 64],
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
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    if colour_vae:
        colour_decoder(vae)
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
        ),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        transformer=transformer,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out
