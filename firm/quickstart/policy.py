"""The quickstart's base editing policy: a tiny Qwen-Image-Edit, warmed up on synthetic edits before RL.

RL starts from a pretrained model, one that already edits but not always as asked; a random tiny policy is not that
(its samples are noise, which the critic scores all alike, so rewards carry no signal). So the quickstart builds the
scene policy (`firm.rl.policies.tiny_scene`) and trains its transformer for a few hundred flow-matching steps on
synthetic edits of the curation world — "Add 4 red squares." with targets that draw 0..4 squares and repaint 0..4
cells, uniformly — so that it samples plausible edits of varying quality. The RL stage then has a reward to climb:
all four squares, nothing else changed.

Flow matching as the policies sample (diffusers' convention): x_σ = (1 − σ)·x0 + σ·ε, target velocity ε − x0,
σ ~ U(0, 1); the source image and instruction condition through the policy adapter's own `encode`, so the
warm-up trains exactly the function RL fine-tunes. The items use their own seed (not the curation, bench or RL
prompt seeds). The pipeline is written to a staging directory and renamed into place, so a directory that exists is
complete.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pydantic import BaseModel

WARMUP_SEED = 4000
MAX_SEQUENCE_LENGTH = 96
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


def build_edit_policy(
    out: Path, *, steps: int, items: int, resolution: int, image_size: int, batch_size: int = 32,
    lr: float = 2e-3, seed: int = 0,
) -> WarmUp:  # fmt: skip
    """Build the scene Qwen-Image-Edit policy, warm it up for `steps` steps on `items` synthetic edits rendered at
    `image_size` px (sampled at `resolution` px), and save it at `out` (atomically)."""
    import torch

    from firm.curation.synthetic import synthetic_edit_items
    from firm.progress import Progress
    from firm.quickstart.data import REQUESTED
    from firm.rl.config import PolicyConfig
    from firm.rl.policies.loading import load_policy
    from firm.rl.policies.qwen_edit import QwenEditPolicy
    from firm.rl.policies.tiny import build_tiny_qwen_edit

    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    build_tiny_qwen_edit(staging, seed=seed, scene=True)
    cfg = PolicyConfig(
        kind="qwen_edit", uri=str(staging), resolution=resolution, max_sequence_length=MAX_SEQUENCE_LENGTH,
        condition_pixels=CONDITION_PIXELS, prompt_template_drop=0,
    )  # fmt: skip
    policy = load_policy(cfg, torch.device("cpu"))
    assert isinstance(policy, QwenEditPolicy)
    t0 = time.perf_counter()
    edits = synthetic_edit_items(items, seed=WARMUP_SEED, size=image_size, requested=REQUESTED)
    instructions = [e.instruction for e in edits]
    cond = policy.encode(instructions, [e.source for e in edits])
    target = policy.image_latents([e.edited for e in edits])

    transformer = policy.transformer
    transformer.requires_grad_(True).train()
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    with Progress("warm up the quickstart policy", total=steps) as bar:
        for _ in range(steps):
            idx = torch.randint(0, items, (batch_size,), generator=gen)
            x0 = target[idx]
            eps = torch.randn(x0.shape, generator=gen)
            sigma = torch.rand(batch_size, generator=gen)
            x = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * eps
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


def read_warmup(policy: Path) -> WarmUp | None:
    """The warm-up record saved with a quickstart policy (None for a policy built otherwise)."""
    path = policy / WARMUP_RECORD
    return WarmUp.model_validate_json(path.read_text()) if path.is_file() else None
