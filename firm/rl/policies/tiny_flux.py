"""Tiny random FLUX policies built from configs: FLUX.1-Kontext (editing) and FLUX.2-klein (text-to-image).

The real diffusers/transformers classes at toy sizes, saved with `save_pretrained`, so they load through exactly the
code the real checkpoints do (`FluxKontextPipeline` / `Flux2KleinPipeline.from_pretrained(dir)`). Tokenizers are
built offline: a character-level CLIP (`firm.rl.policies.tiny.char_clip_tokenizer`), a character-level Unigram T5 and
a byte-level BPE Qwen tokenizer with a minimal chat template. The VAE decoders are re-initialised so that latent
channels carry colour (`firm.rl.policies.tiny_parts.colour_decoder`), which makes cheap colour rewards learnable.

    python -m firm.rl.policies.tiny flux_kontext runs/tiny-flux-kontext --prompts runs/tiny-flux-kontext/prompts.jsonl
    python -m firm.rl.policies.tiny flux2_klein runs/tiny-flux2-klein --prompts runs/tiny-flux2-klein/prompts.txt
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from firm.rl.policies.tiny import char_clip_tokenizer
from firm.rl.policies.tiny_parts import colour_decoder

_T5_CHARS = string.ascii_letters + string.digits + ".,'-!?"

# What `Qwen3`'s template renders for one user message with add_generation_prompt and enable_thinking=False (an empty
# think block), without the tool-calling branches the tiny models never see.
TINY_QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def char_t5_tokenizer() -> Any:
    """A character-level Unigram `T5TokenizerFast` (SentencePiece-style ▁ word starts, `</s>` appended, `<pad>` = 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(c, -2.0) for c in _T5_CHARS]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.post_processor = TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )


def _tiny_vae(cls: Any, *, latent_channels: int, colour_vae: bool, **extra: Any) -> Any:
    """A 4-level (8× downsampling) tiny `AutoencoderKL`-family VAE; its decoder carries colour if `colour_vae`."""
    vae = cls(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        **extra,
    )
    if colour_vae:
        colour_decoder(vae)
    return vae


def build_tiny_flux_kontext(out_dir: str | Path, *, seed: int = 0, colour_vae: bool = True) -> Path:
    """Build and save a tiny `FluxKontextPipeline` (32 px images ↔ 4×4×16 latents ↔ 4 packed tokens).

    Transformer: `FluxTransformer2DModel` with one double-stream and one single-stream block (4 heads × 8), guidance
    embedding on (FLUX.1-Kontext-dev is guidance-distilled); a tiny `CLIPTextModel` (pooled projection) and a tiny
    `T5EncoderModel` (dropout 0) with character-level tokenizers; a 16-channel `AutoencoderKL` with FLUX's scaling
    and shift factors; the scheduler config of FLUX.1-Kontext-dev (dynamic shifting, 0.5 → 1.15 over 256 → 4096
    tokens).
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    out = Path(out_dir)
    torch.manual_seed(seed)
    clip_tok = char_clip_tokenizer(max_length=32)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_act="gelu",
        )
    )
    t5_tok = char_t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,  # T5 d_model
        pooled_projection_dim=32,  # CLIP hidden size
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    vae = _tiny_vae(
        AutoencoderKL,
        latent_channels=16,
        colour_vae=colour_vae,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=vae,
        text_encoder=clip.eval(),
        tokenizer=clip_tok,
        text_encoder_2=t5.eval(),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out


def _byte_level_qwen_tokenizer() -> Any:
    """A byte-level BPE `Qwen2TokenizerFast` without merges (one token per byte) and Qwen's chat special tokens."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok = Qwen2TokenizerFast(
        vocab=vocab,
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    tok.chat_template = TINY_QWEN3_CHAT_TEMPLATE
    return tok


def build_tiny_flux2_klein(out_dir: str | Path, *, seed: int = 0, colour_vae: bool = True) -> Path:
    """Build and save a tiny `Flux2KleinPipeline` (32 px images ↔ 4×4×4 VAE latents ↔ 2×2×16 patchified ↔ 4 tokens).

    Transformer: `Flux2Transformer2DModel` with one double-stream and one single-stream (fused parallel attention)
    block, 4 heads × 8, 4-axis RoPE, no guidance embedding (as FLUX.2-klein); text encoder: a 3-layer tiny
    `Qwen3ForCausalLM` with a byte-level tokenizer and a Qwen3-style chat template, read at hidden-state layers
    (1, 2, 3) (the real model: (9, 18, 27), `policy.options.text_encoder_out_layers`); an `AutoencoderKLFlux2` with
    4 latent channels, 2×2 patchification and identity batch-norm statistics; the FLUX.2 scheduler config.
    """
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = _byte_level_qwen_tokenizer()
    hidden = 16
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=True,
        )
    ).eval()
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 VAE latent channels × 2×2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=3 * hidden,  # three stacked text-encoder layers
        timestep_guidance_channels=32,
        mlp_ratio=2.0,
        axes_dims_rope=(2, 2, 2, 2),
        guidance_embeds=False,
    )
    vae = _tiny_vae(AutoencoderKLFlux2, latent_channels=4, colour_vae=colour_vae)
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
            time_shift_type="exponential",
        ),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        transformer=transformer,
        is_distilled=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out
