"""A tiny Qwen-Image core whose images a synthetic-data critic can read (the quickstart's editing and generation
policies).

The other tiny policies decode latents to coloured noise, which is enough for plumbing and cheap rewards but not for
a learned critic: a critic trained on `firm.curation.synthetic` scenes (a light-grey 2 × 2 grid, red squares, tinted
cells) scores every noise image alike, so RL has nothing to climb. This core is the same diffusers classes at toy
size, set so that a short flow-matching warm-up (`firm.quickstart.policy`) brings the samples into that world:

- `scene_vae()`: an `AutoencoderKLQwenImage` with five levels (16× downsampling) and 4 latent channels, set by hand —
  no training — to be a colour autoencoder. Both halves zero their residual branches and attention outputs and make
  shortcuts and resamplers identities; the encoder's first conv writes each RGB channel as a (x, −x) pair and its
  last conv reads each pair's difference back, so latent channels 0..2 are the colour direction of the 16 × 16 block
  (its pixel at the resampling taps) with unit-scale components, channel 3 is 0; the decoder does the reverse and
  its last RMS-norm gain sets the colour magnitude so that grey decodes to the scenes' background. Colours keep their
  hue and lose their brightness (a per-pixel norm); a 128-px image is 8 × 8 latents, and the scenes' cells (64 px)
  and red squares (32 px) fall on whole latents. The critic reads 128-px samples at its 112-px training size; 64-px
  ones (4 vision tokens) it cannot read at all.
- the transformer: 2 layers of 2 heads × 32 (64 wide, for 4 × 4 = 16 packed latent dimensions) — the velocity at
  high noise is mostly the noise itself, which a block narrower than its input cannot pass through.

16× downsampling and 4 latent channels are not Qwen-Image's (8×, 16): the pipelines read both from the VAE config
(`vae_scale_factor` = 2 ** len(temperal_downsample), latent channels = z_dim), so nothing else changes. Both the
Qwen-Image-Edit and the Qwen-Image builders take this core (`scene=True`). (An SD3 version was tried: with absolute
position embeddings its 2-layer transformer did not learn the squares' shape in a few hundred steps, where
Qwen-Image's RoPE one does.)
"""

from __future__ import annotations

from typing import Any

from firm.curation.synthetic import BACKGROUND
from firm.rl.policies.tiny_parts import causal_eye, qwen_image_scheduler, qwen_vae_passthrough, signed_pairs

Z_DIM = 4
RGB = 3


def scene_vae() -> Any:
    """The hand-set colour autoencoder described in the module docstring."""
    import torch
    from diffusers import AutoencoderKLQwenImage

    vae = AutoencoderKLQwenImage(
        base_dim=12,  # the narrowest decoder block passes 6 channels: three (x, −x) pairs
        z_dim=Z_DIM,
        dim_mult=[1, 1, 1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, False, True, True],
        latents_mean=[0.0] * Z_DIM,
        latents_std=[1.0] * Z_DIM,
    )
    with torch.no_grad():
        for conv in (vae.quant_conv, vae.post_quant_conv):
            causal_eye(conv.weight)
            conv.bias.zero_()
        for half in (vae.encoder, vae.decoder):
            qwen_vae_passthrough(half)
            signed_pairs(half.conv_in, half.conv_out, RGB, RGB, tap=(-1, 1, 1))
        # After the last RMS norm a pair channel is sqrt(C)·g·x_c / sqrt(2·|x|²), and the output reads x_c back
        # (silu(a) − silu(−a) = a), so colour c = sqrt(C / 2)·g·x_c / |x|.
        enc = vae.encoder.norm_out.gamma
        enc.fill_((RGB / (enc.shape[0] / 2)) ** 0.5)  # |z| = sqrt(3): unit-scale latent components
        # the grey direction (1, 1, 1)/sqrt(3) decodes to the scenes' background
        grey = BACKGROUND[0] / 127.5 - 1
        dec = vae.decoder.norm_out.gamma
        dec.fill_(grey * RGB**0.5 / (dec.shape[0] / 2) ** 0.5)
    return vae


def scene_qwen_image_core() -> tuple[Any, Any, Any]:
    """(transformer, VAE, scheduler) of the scene policy: see the module docstring."""
    from diffusers import QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * Z_DIM,
        out_channels=Z_DIM,
        num_layers=2,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=64,
        axes_dims_rope=(8, 12, 12),
    )
    return transformer, scene_vae(), qwen_image_scheduler()
