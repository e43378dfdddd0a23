"""Sample from a policy with an optional LoRA (what `firmctl rl sample` runs): the plain diffusers pipeline call."""

from __future__ import annotations

from pathlib import Path

import torch

from firm.errors import ConfigError, InputError
from firm.rl.config import PolicyConfig
from firm.rl.policies.loading import load_policy, pick_device, resolve_pretrained


def sample_images(
    *,
    policy_uri: str,
    prompts: list[str],
    out_dir: str | Path,
    lora_uri: str | None = None,
    image: str | None = None,
    kind: str = "sd3",
    steps: int = 40,
    resolution: int = 512,
    seed: int = 0,
    max_sequence_length: int = 256,
    device: str = "auto",
) -> list[Path]:
    if kind not in ("sd3", "qwen_edit"):
        raise ConfigError(f"--kind {kind}: expected sd3 or qwen_edit")
    if kind == "qwen_edit" and not image:
        raise InputError("editing policies need --image (the source image)")
    prompts = [p.strip() for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise InputError("--prompt must not be empty")
    cfg = PolicyConfig(
        kind=kind, uri=policy_uri, resolution=resolution, max_sequence_length=max_sequence_length
    )  # type: ignore[arg-type]
    policy = load_policy(cfg, pick_device(device))
    pipe = policy.pipeline
    if lora_uri:
        pipe.load_lora_weights(resolve_pretrained(lora_uri))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs: dict = {"num_inference_steps": steps, "height": resolution, "width": resolution}
    if kind == "sd3":
        kwargs.update(guidance_scale=1.0, max_sequence_length=max_sequence_length)
    else:
        from firm.critic.images import load_image

        kwargs.update(image=load_image(image).convert("RGB"), true_cfg_scale=1.0)  # type: ignore[arg-type]
    paths = []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(seed + i)
        img = pipe(prompt=prompt, generator=gen, **kwargs).images[0]
        p = out / f"sample-{i:03d}.png"
        img.save(p)
        paths.append(p)
    return paths
