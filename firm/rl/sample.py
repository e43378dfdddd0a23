"""Sample from a policy with an optional LoRA (what `firmctl rl sample` runs): the plain diffusers pipeline call."""

from __future__ import annotations

from pathlib import Path

import torch

from firm.errors import ConfigError, InputError
from firm.rl.config import PolicyConfig
from firm.rl.policies.loading import load_policy, pick_device
from firm.rl.policies.pretrained import resolve_pretrained
from firm.storage.base import atomic_path


def policy_config(
    kind: str, uri: str, resolution: int, max_sequence_length: int, condition_pixels: int
) -> PolicyConfig:
    """The policy settings `sample_images` loads with (the editing VL-encoder pixel budget included)."""
    return PolicyConfig(
        kind=kind,  # type: ignore[arg-type]
        uri=uri,
        resolution=resolution,
        max_sequence_length=max_sequence_length,
        condition_pixels=condition_pixels,
    )


def _check_local(where: str, what: str, needs: tuple[str, ...], kind: str) -> None:
    """A local directory given as `what` must hold what loading it needs (one `error:` line, not a traceback)."""
    path = Path(where)
    if not path.exists():
        return  # a Hugging Face id
    if path.is_file():
        if what == "--lora" and path.suffix in needs:
            return
        raise InputError(f"{what}={where}: expected {kind}, got a file")
    names = [p.name for p in path.iterdir()]
    if not any(n == need or n.endswith(need) for n in names for need in needs):
        raise InputError(f"{what}={where}: not {kind} (no {' or '.join(needs)} in it)")


def sample_images(
    *,
    policy_uri: str,
    prompts: list[str],
    out_dir: str | Path,
    lora_uri: str | None = None,
    image: str | None = None,
    kind: str | None = None,
    steps: int = 40,
    resolution: int = 512,
    seed: int = 0,
    max_sequence_length: int = 256,
    device: str = "auto",
    condition_pixels: int = 384 * 384,
) -> list[Path]:
    from firm.rl.policies.registry import FAMILIES

    if kind is None:  # the CLI contract: --image means an editing policy
        kind = "qwen_edit" if image else "sd3"
    if kind not in FAMILIES:
        raise ConfigError(f"--kind {kind}: expected one of {', '.join(FAMILIES)}")
    editing = FAMILIES[kind].task == "edit"
    if editing and not image:
        raise InputError("editing policies need --image (the source image)")
    if not editing and image:
        raise InputError(f"--image is for editing policies (e.g. --kind qwen_edit); {kind} is text-to-image")
    prompts = [p.strip() for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise InputError("--prompt must not be empty")
    src = None
    if editing:
        from firm.rl.data import load_source

        src = load_source(image, resolution)  # type: ignore[arg-type]  # a bad image fails before any loading
    lora_dir = resolve_pretrained(lora_uri, what="--lora") if lora_uri else None  # before loading the policy
    policy_dir = resolve_pretrained(policy_uri, what="--policy")
    _check_local(policy_dir, "--policy", ("model_index.json",), "a diffusers pipeline directory")
    if lora_dir:
        _check_local(lora_dir, "--lora", (".safetensors", ".bin"), "a LoRA directory (diffusers format)")
    cfg = policy_config(
        kind,
        policy_dir,
        resolution,
        max_sequence_length,
        condition_pixels,
    )
    policy = load_policy(cfg, pick_device(device))
    pipe = policy.pipeline
    if lora_dir:
        pipe.load_lora_weights(lora_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(seed + i)
        if kind == "sd3":  # the plain diffusers call, CFG-free as trained
            img = pipe(
                prompt=prompt,
                generator=gen,
                num_inference_steps=steps,
                height=resolution,
                width=resolution,
                guidance_scale=1.0,
                max_sequence_length=max_sequence_length,
            ).images[0]
        else:  # the policy's own ODE sampler, as trained (Qwen-Image-Edit's pipeline call hard-codes a ~1024² VAE
            # copy of the source; other families' calls differ in guidance defaults)
            from firm.rl.rewards import to_pil
            from firm.rl.sampling import ode_rollout

            cond = policy.encode([prompt], [src] if editing else None)
            with torch.no_grad():
                traj = ode_rollout(
                    policy.velocity, policy.initial_noise(1, gen, cond), policy.sigmas(steps, cond), cond
                )
            img = to_pil(policy.decode(traj.final, cond)[0])
        p = out / f"sample-{i:03d}.png"
        with atomic_path(p) as tmp:
            img.save(tmp, format="PNG")
        paths.append(p)
    return paths
