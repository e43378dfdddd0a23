"""Hand-set parts shared by the tiny policy builders (`firm.rl.policies.tiny`, `tiny_flux`, `tiny_qwen_image`,
`tiny_scene`): VAE decoders that carry colour without training, the pass-through pieces they are made of, and the
Qwen-Image family's scheduler at tiny sequence lengths. The low module of the tiny builders: it imports none of them.
"""

from __future__ import annotations

from typing import Any


def colour_decoder(vae: Any) -> None:
    """Re-initialise a tiny `AutoencoderKL` decoder so that latents carry colour, without any training.

    A random tiny decoder maps every latent to nearly the same mean colour (its last GroupNorm removes the scale and
    offset of random features), so no reward on image colour could ever be learned through it. Here residual branches
    are zeroed and the remaining convolutions are identities, the first conv writes (z_k, −z_k) channel pairs, and the
    output conv reads each pair's difference: pixel colour c = z_c / rms(z_c) after the GroupNorm, for latent channels
    0, 1, 2 → R, G, B. It is still a plain `AutoencoderKL` (saved and loaded normally).
    """
    import torch

    dec = vae.decoder
    with torch.no_grad():
        silence_residuals(
            dec,
            (torch.nn.Conv2d, torch.nn.Linear),
            zero=("conv2", "to_out.0"),
            identity=("conv_shortcut", "upsamplers.0.conv"),
            eye=torch.nn.init.dirac_,
        )
        w = dec.conv_in.weight
        signed_pairs(dec.conv_in, dec.conv_out, min(w.shape[0] // 2, w.shape[1]), 3, tap=(1, 1))


def silence_residuals(
    dec: Any, kinds: tuple[type, ...], *, zero: tuple[str, ...], identity: tuple[str, ...], eye: Any
) -> None:
    """Zero the residual branches (`zero` suffixes) and make shortcuts/resamplers (`identity`) pass features through."""
    for name, mod in dec.named_modules():
        if not isinstance(mod, kinds):
            continue
        if name.endswith(zero):
            mod.weight.zero_()
        elif name.endswith(identity):
            eye(mod.weight)
        else:
            continue
        if mod.bias is not None:
            mod.bias.zero_()


def signed_pairs(conv_in: Any, conv_out: Any, n_in: int, n_out: int, *, tap: tuple[int, ...]) -> None:
    """`conv_in` writes latent channel k as the pair (z_k, −z_k); `conv_out` reads each pair's difference back as
    output channel c (c < n_out). `tap` is the kernel position that sees the current pixel (and frame)."""
    for conv in (conv_in, conv_out):
        conv.weight.zero_()
        conv.bias.zero_()
    for k in range(n_in):
        conv_in.weight[(2 * k, k, *tap)] = 1.0
        conv_in.weight[(2 * k + 1, k, *tap)] = -1.0
    for c in range(n_out):
        conv_out.weight[(c, 2 * c, *tap)] = 1.0
        conv_out.weight[(c, 2 * c + 1, *tap)] = -1.0


def causal_eye(w: Any) -> None:
    """Make a (causal 3-D or 2-D) convolution weight pass its first min(out, in) channels through unchanged: the
    centre spatial tap, and the last temporal tap (the current frame) of a causal 3-D kernel."""
    import torch

    w.zero_()
    idx = torch.arange(min(w.shape[0], w.shape[1]))
    if w.ndim == 5:
        w[idx, idx, -1, w.shape[3] // 2, w.shape[4] // 2] = 1.0
    else:
        w[idx, idx, w.shape[2] // 2, w.shape[3] // 2] = 1.0


def qwen_vae_passthrough(half: Any) -> None:
    """An `AutoencoderKLQwenImage` encoder or decoder made to pass features through: residual branches and attention
    outputs zeroed, shortcuts and resamplers identities (call under `torch.no_grad()`)."""
    import torch

    silence_residuals(
        half,
        (torch.nn.Conv2d, torch.nn.Conv3d),
        zero=("conv2", "attentions.0.proj"),
        identity=("conv_shortcut", "resample.1"),
        eye=causal_eye,
    )


def qwen_colour_decoder(vae: Any) -> None:
    """The `colour_decoder` idea for a tiny `AutoencoderKLQwenImage` (causal 3-D convolutions, per-pixel RMS norm):
    residual branches and attention outputs zeroed, shortcuts and resamplers identities, (z_k, −z_k) channel pairs
    written by the first conv and read back by the last, so that after the final RMS norm R and G are latent channels
    0 and 1 divided by their per-pixel norm (B stays mid-grey). Causal convs see the current frame at the last
    temporal tap."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

    dec = vae.decoder
    with torch.no_grad():
        causal_eye(vae.post_quant_conv.weight)
        vae.post_quant_conv.bias.zero_()
        qwen_vae_passthrough(dec)
        # only 4 channels pass the narrowest up-block of the tiny decoder: two latent channels, R and G out
        signed_pairs(dec.conv_in, dec.conv_out, 2, 2, tap=(-1, 1, 1))
    assert isinstance(dec.conv_in, QwenImageCausalConv3d)


def qwen_image_scheduler() -> Any:
    """The Qwen-Image family's dynamic-shift flow-matching scheduler at tiny sequence lengths."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=16,
        max_image_seq_len=1024,
        shift_terminal=0.02,
    )
