"""Evaluate a policy before and after RL on the same prompts, seeds and reward: what a pipeline's eval step reports.

`evaluate_policy(cfg, lora_uri=...)` loads the recipe's policy once, samples each evaluation prompt with the
deterministic ODE sampler (same seed per prompt) without and then with the trained LoRA, scores both sets with the
recipe's reward (e.g. the reward service over gRPC) and returns mean reward, mean sub-scores and the parse-failure
rate of each, plus one PNG grid per side. Evaluation prompts: `data.eval_prompt_file` (held-out prompts) when set;
else generation → `data.eval_prompts` when set, else the first prompts of `data.prompts`; editing → the first items
of `data.prompts` (instruction + source image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from firm.rl.config import RLConfig
from firm.rl.rewards import is_scored
from firm.schemas import RewardBreakdown

SUB_SCORES = ("execution", "consistency", "instruction", "quality")


class SideResult(BaseModel):
    """Numbers for one side (base policy or policy + LoRA)."""

    reward_mean: float | None
    parse_failure_rate: float
    sub_scores: dict[str, float]
    rewards: list[float | None]
    grid: Path


class PolicyEval(BaseModel):
    prompts: list[str]
    before: SideResult
    after: SideResult | None = None

    def metrics(self) -> dict[str, float]:
        """Flat `eval/<side>/<name>` numbers (KFP Metrics, JSON)."""
        out: dict[str, float] = {}
        for side, res in (("before", self.before), ("after", self.after)):
            if res is None:
                continue
            if res.reward_mean is not None:
                out[f"eval/{side}/reward_mean"] = res.reward_mean
            out[f"eval/{side}/parse_failure_rate"] = res.parse_failure_rate
            out |= {f"eval/{side}/{k}": v for k, v in res.sub_scores.items()}
        return out


def _summary(rewards: list[RewardBreakdown], grid: Path) -> SideResult:
    scored = [float(r.reward) for r in rewards if is_scored(r)]  # type: ignore[arg-type]
    subs: dict[str, float] = {}
    for k in SUB_SCORES:
        vals = [getattr(r, k) for r in rewards if getattr(r, k) is not None]
        if vals:
            subs[k] = float(sum(vals) / len(vals))
    return SideResult(
        reward_mean=float(sum(scored) / len(scored)) if scored else None,
        parse_failure_rate=sum(r.status != "ok" for r in rewards) / max(1, len(rewards)),
        sub_scores=subs,
        rewards=[r.reward for r in rewards],
        grid=grid,
    )


def _save_grid(images: list[torch.Tensor], out: Path) -> Path:
    from firm.rl.rewards import to_pil
    from firm.storage.base import atomic_path

    cols = min(len(images), 4)
    rows = -(-len(images) // cols)
    c, h, w = images[0].shape
    grid = torch.ones(c, rows * h, cols * w)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[:, r * h : (r + 1) * h, k * w : (k + 1) * w] = img
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        to_pil(grid).save(tmp, format="PNG")
    return out


def evaluate_policy(
    cfg: RLConfig,
    *,
    lora_uri: str | None,
    out_dir: str | Path,
    n_prompts: int = 4,
    num_steps: int | None = None,
    seed: int = 0,
) -> PolicyEval:
    """Sample and score the evaluation prompts without and with `lora_uri` (see the module docstring)."""
    from firm.errors import InputError
    from firm.rl.data import load_prompts, load_source
    from firm.rl.policies.loading import load_policy, pick_device
    from firm.rl.policies.pretrained import resolve_pretrained
    from firm.rl.rewards import RewardItem, build_reward, with_retries
    from firm.rl.sampling import ode_rollout

    out = Path(out_dir)
    if cfg.data.eval_prompt_file:
        items = load_prompts(cfg.data.eval_prompt_file, cfg.task, cfg.data.max_prompt_chars)
    elif cfg.task == "gen" and cfg.data.eval_prompts:
        items: list[Any] = [type("P", (), {"prompt": p, "source": None})() for p in cfg.data.eval_prompts]
    else:
        items = load_prompts(cfg.data.prompts, cfg.task, cfg.data.max_prompt_chars)
    items = items[:n_prompts]
    if not items:
        raise InputError(f"{cfg.data.prompts}: no prompts to evaluate on")
    steps = num_steps or cfg.sampling.eval_num_steps
    policy = load_policy(cfg.policy, pick_device(cfg.device))
    reward = build_reward(cfg.reward, cfg.task)
    sources = [load_source(it.source, cfg.policy.resolution) if cfg.task == "edit" else None for it in items]

    def side(tag: str) -> SideResult:
        images = []
        for i, (it, src) in enumerate(zip(items, sources, strict=True)):
            gen = torch.Generator().manual_seed(seed + i)
            cond = policy.encode([it.prompt], [src] if src is not None else None)
            with torch.no_grad():
                traj = ode_rollout(
                    policy.velocity, policy.initial_noise(1, gen, cond), policy.sigmas(steps, cond), cond
                )
                images.append(policy.decode(traj.final, cond)[0].float().cpu())
        scored = with_retries(
            reward,
            [RewardItem(cfg.task, it.prompt, img, src, f"eval-{i}") for i, (it, img, src) in
             enumerate(zip(items, images, sources, strict=True))],
            cfg.reward.retries,
            cfg.reward.retry_backoff_s,
        )  # fmt: skip
        return _summary(scored, _save_grid(images, out / f"grid-{tag}.png"))

    result = PolicyEval(prompts=[it.prompt for it in items], before=side("before"))
    if lora_uri:
        policy.pipeline.load_lora_weights(resolve_pretrained(lora_uri, what="lora_uri"))
        result.after = side("after")
    close = getattr(reward, "close", None)
    if close is not None:
        close()
    return result
