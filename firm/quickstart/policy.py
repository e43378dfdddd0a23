"""The quickstart's base policies: tiny scene policies, warmed up on synthetic data before RL.

RL starts from a pretrained model, one that already edits or draws but not always as asked; a random tiny policy is
not that (its samples are noise, which the critic scores all alike, so rewards carry no signal). So the quickstart
builds a scene policy (`firm.rl.policies.tiny_scene`: Qwen-Image-Edit for editing, SD3 for generation) and trains
its transformer for a few hundred flow-matching steps on the curation world's synthetic data, so that it samples
plausible images of varying quality:

- edit: "Add 4 red squares." on a source image, with targets that draw 0..4 of the squares and repaint 0..4 cells,
  uniformly — RL then climbs towards all four squares and nothing else changed;
- gen: "A picture of k red squares." with images of 0..4 squares, the count drawn independently of k — RL then
  climbs towards the asked count (or, at the least, towards counts that are never far off).

Flow matching as the policies sample (diffusers' convention): x_σ = (1 − σ)·x0 + σ·ε, target velocity ε − x0,
σ ~ U(0, 1); prompts (and source images) condition through the policy adapter's own `encode` and targets are the
adapter's `image_latents`, so the warm-up trains exactly the function RL fine-tunes. The items use their own seed
(not the curation, bench or RL prompt seeds). The pipeline is written to a staging directory and renamed into
place, so a directory that exists is complete.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

WARMUP_SEED = 4000
MAX_SEQUENCE_LENGTH = {"edit": 96, "gen": 32}  # as in rl/tiny_qwen_edit_nft and rl/tiny_qwen_image_nft
CONDITION_PIXELS = 56 * 56  # the tiny VL encoder's budget (as in rl/tiny_qwen_edit_nft)
WARMUP_RECORD = "firm_warmup.json"


class WarmUp(BaseModel):
    """What the warm-up did (for the report)."""

    steps: int
    items: int
    batch_size: int
    resolution: int
    first_loss: float
    last_loss: float
    seconds: float


def build_policy(
    task: Literal["edit", "gen"], out: Path, *, steps: int, items: int, resolution: int, image_size: int,
    batch_size: int = 32, lr: float = 2e-3, seed: int = 0, progress_interval: float | None = None,
) -> WarmUp:  # fmt: skip
    """Build the scene policy of `task`, warm it up for `steps` steps on `items` synthetic items rendered at
    `image_size` px (sampled at `resolution` px), and save it at `out` (atomically). `progress_interval`: seconds
    between progress lines when stderr is not a terminal (None: `FIRM_PROGRESS_INTERVAL`; 0: none)."""
    import torch

    from firm.curation.synthetic import synthetic_edit_items, synthetic_gen_items
    from firm.progress import Progress
    from firm.quickstart.data import REQUESTED
    from firm.rl.policies.loading import load_policy
    from firm.rl.policies.tiny import build_tiny_qwen_edit
    from firm.rl.policies.tiny_qwen_image import build_tiny_qwen_image

    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    if task == "edit":
        build_tiny_qwen_edit(staging, seed=seed, scene=True)
    else:
        build_tiny_qwen_image(staging, seed=seed, scene=True)
    policy = load_policy(policy_config(task, staging, resolution), torch.device("cpu"))
    t0 = time.perf_counter()
    if task == "edit":
        edits = synthetic_edit_items(items, seed=WARMUP_SEED, size=image_size, requested=REQUESTED)
        cond = policy.encode([e.instruction for e in edits], [e.source for e in edits])
        target = policy.image_latents([e.edited for e in edits])  # type: ignore[attr-defined]
    else:
        gens = synthetic_gen_items(items, seed=WARMUP_SEED, size=image_size)
        cond = policy.encode([g.prompt for g in gens])
        target = policy.image_latents([g.image for g in gens])  # type: ignore[attr-defined]

    transformer = policy.transformer
    transformer.requires_grad_(True).train()
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    with Progress(f"warm up the quickstart {task} policy", total=steps, interval=progress_interval) as bar:
        for _ in range(steps):
            idx = torch.randint(0, items, (batch_size,), generator=gen)
            x0 = target[idx]
            eps = torch.randn(x0.shape, generator=gen)
            sigma = torch.rand(batch_size, generator=gen)
            t = sigma.view(-1, *[1] * (x0.ndim - 1))
            x = (1 - t) * x0 + t * eps
            loss = ((policy.velocity(x, sigma, cond.select(idx)) - (eps - x0)) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.advance(1, info=f"loss {losses[-1]:.3f}")
    transformer.requires_grad_(False).eval()
    policy.pipeline.save_pretrained(staging)
    window = max(1, min(20, steps // 4))
    record = WarmUp(
        steps=steps, items=items, batch_size=batch_size, resolution=resolution,
        first_loss=sum(losses[:window]) / window, last_loss=sum(losses[-window:]) / window,
        seconds=time.perf_counter() - t0,
    )  # fmt: skip
    (staging / WARMUP_RECORD).write_text(record.model_dump_json(indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return record


def policy_config(task: Literal["edit", "gen"], uri: str | Path, resolution: int) -> Any:
    """The policy section the warm-up loads a scene policy with: the RL recipes' own values (rl/tiny_qwen_edit_nft,
    rl/tiny_qwen_image_nft) at the quickstart's resolution, without classifier-free guidance."""
    from firm.rl.config import PolicyConfig

    if task == "edit":
        return PolicyConfig(
            kind="qwen_edit", uri=str(uri), resolution=resolution, max_sequence_length=MAX_SEQUENCE_LENGTH[task],
            condition_pixels=CONDITION_PIXELS, prompt_template_drop=0,
        )  # fmt: skip
    return PolicyConfig(
        kind="qwen_image", uri=str(uri), resolution=resolution, max_sequence_length=MAX_SEQUENCE_LENGTH[task],
        options={"true_cfg_scale": 1.0, "prompt_template_drop": "auto"},  # trained without an unconditional branch
    )  # fmt: skip


def read_warmup(policy: Path) -> WarmUp | None:
    """The warm-up record saved with a quickstart policy (None for a policy built otherwise)."""
    path = policy / WARMUP_RECORD
    return WarmUp.model_validate_json(path.read_text()) if path.is_file() else None
