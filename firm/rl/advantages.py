"""Per-prompt group advantages and DiffusionNFT's optimality probability r.

A prompt's K rollouts form a group; A = (R − mean)/(std + 1e-4) with the group's population std, clipped to
±clip. A sample whose reward is None (its critic output did not parse) is dropped from its group — never scored as
0; a group left with fewer than 2 scored samples has no baseline and is dropped as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STD_EPS = 1e-4


@dataclass
class GroupStats:
    advantages: list[float | None]  # one per sample, None = dropped
    dropped_samples: int  # samples with reward None
    dropped_groups: int  # groups with < 2 scored samples
    zero_std_groups: int
    groups: int


def group_advantages(groups: list[list[float | None]], clip: float = 5.0) -> GroupStats:
    """Advantages for each sample of each group (flattened in order)."""
    out: list[float | None] = []
    dropped = dropped_groups = zero_std = 0
    for rewards in groups:
        valid = [r for r in rewards if r is not None]
        dropped += len(rewards) - len(valid)
        if len(valid) < 2:
            dropped_groups += 1
            out.extend([None] * len(rewards))
            continue
        t = torch.tensor(valid, dtype=torch.float64)
        mean, std = t.mean(), t.std(unbiased=False)
        if float(std) == 0.0:
            zero_std += 1
        adv = ((t - mean) / (std + STD_EPS)).clamp(-clip, clip).tolist()
        it = iter(adv)
        out.extend([next(it) if r is not None else None for r in rewards])
    return GroupStats(out, dropped, dropped_groups, zero_std, len(groups))


def optimality_probability(advantages: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
    """r = clamp(A/(2·clip) + 0.5, 0, 1): with clip 5, r = A/10 + 0.5."""
    return (advantages / (2.0 * clip) + 0.5).clamp(0.0, 1.0)
