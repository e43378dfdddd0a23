"""Advantages of a step's prompt groups and DiffusionNFT's optimality probability r.

A prompt's K rollouts form a group. A = (R − group mean) / (std + 1e-4), clipped to ±clip, where std is the
population std of either every reward of the step (`std="global"`, the official trainers' `global_std=True`) or of
the prompt's own group (`std="group"`). A sample whose reward is None (dropped by the `skip` parse-failure policy)
takes no part; a group left with fewer than 2 rewards has no baseline and is dropped as a whole. The global std is
taken over the rewards of the groups that are kept. A group whose rewards are all equal gets advantages of exactly 0
(not the rounding residue of R − mean).

Which samples an update trains on (`trained_flags`) depends on the algorithm. Flow-GRPO drops the samples whose
advantage is 0 (`scripts/train_sd3.py` keeps `advantages.abs().sum(dim=1) != 0`): they carry no policy gradient, and
dropping them keeps them out of the loss's denominator and its KL term. Flow-GRPO then puts back random dropped
samples until the count divides its number of micro-batches; FIRM weights each sample instead of cutting fixed-size
micro-batches, so it needs no filler and trains none (a deliberate difference: the fillers only add KL gradient).
DiffusionNFT keeps them: with A = 0 its optimality probability is r = 0.5, whose loss still pulls v_θ towards v_old,
and the official NFT trainers train every sample (`filtered_samples = collated_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

STD_EPS = 1e-4
AdvantageStd = Literal["global", "group"]


@dataclass
class GroupStats:
    advantages: list[float | None]  # one per sample, flattened in group order; None = not trained on
    dropped_samples: int  # samples with reward None
    dropped_groups: int  # groups with < 2 rewards
    zero_std_groups: int  # kept groups whose rewards are all equal
    groups: int


def _valid(rewards: list[float | None]) -> list[float]:
    return [r for r in rewards if r is not None]


def group_advantages(
    groups: list[list[float | None]], clip: float = 5.0, std: AdvantageStd = "group"
) -> GroupStats:
    """Advantages for each sample of each group (flattened in order)."""
    kept = [len(_valid(g)) >= 2 for g in groups]
    pooled = [r for g, k in zip(groups, kept, strict=True) if k for r in _valid(g)]
    global_std = torch.tensor(pooled, dtype=torch.float64).std(unbiased=False) if pooled else None
    out: list[float | None] = []
    dropped = dropped_groups = zero_std = 0
    for rewards, keep in zip(groups, kept, strict=True):
        valid = _valid(rewards)
        dropped += len(rewards) - len(valid)
        if not keep:
            dropped_groups += 1
            out.extend([None] * len(rewards))
            continue
        t = torch.tensor(valid, dtype=torch.float64)
        group_std = t.std(unbiased=False)
        if bool((t == t[0]).all()):  # no signal: exactly 0, whatever the mean's rounding
            zero_std += 1
            out.extend([0.0 if r is not None else None for r in rewards])
            continue
        scale = global_std if std == "global" else group_std
        adv = ((t - t.mean()) / (scale + STD_EPS)).clamp(-clip, clip).tolist()
        it = iter(adv)
        out.extend([next(it) if r is not None else None for r in rewards])
    return GroupStats(out, dropped, dropped_groups, zero_std, len(groups))


def trained_flags(advantages: list[float | None], drop_zero: bool) -> list[bool]:
    """Per sample: is it trained on? It needs an advantage; with `drop_zero` (Flow-GRPO) a nonzero one."""
    return [a is not None and not (drop_zero and a == 0.0) for a in advantages]


def optimality_probability(advantages: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
    """r = clamp(A/(2·clip) + 0.5, 0, 1): with clip 5, r = A/10 + 0.5."""
    return (advantages / (2.0 * clip) + 0.5).clamp(0.0, 1.0)
