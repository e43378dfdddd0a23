"""A step's rewards on every rank, in the step's prompt order, and what the update needs from them.

Each rank rolls out the prompt slots s = rank + world·i (i = its i-th group) of the step's prompt order. Before any
weight changes, every rank shares, per sample, the reward it trains on (None → NaN, from the parse-failure policy),
whether the critic's answer parsed, and whether its reward calls failed; every rank then computes the same
advantages for all groups (so a global std sees every reward of the step) and the same sample counts per update.
Slot order makes the result independent of the number of ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from firm.rl.advantages import AdvantageStd, GroupStats, group_advantages
from firm.rl.rewards import RewardServiceError


@dataclass
class StepRewards:
    """Per slot (the step's prompt order) and sample: the training reward (None = dropped) and the parse flag."""

    train: list[list[float | None]]
    parsed: list[list[bool]]
    parsed_rewards: list[float]  # rewards of the samples whose answer parsed (status ok)

    def advantages(self, clip: float, std: AdvantageStd) -> GroupStats:
        return group_advantages(self.train, clip=clip, std=std)


def slot_of(rank: int, world: int, group_index: int) -> int:
    return rank + world * group_index


def update_of(group_index: int, groups_per_rank: int, updates: int) -> int:
    """Which of the step's `updates` optimizer steps a rank's group belongs to. Every update then covers the same
    contiguous range of slots, [u·P/updates, (u+1)·P/updates), on any number of ranks."""
    return group_index * updates // groups_per_rank


def share(
    train: list[list[float | None]],
    parsed: list[list[bool]],
    failed: BaseException | None,
    rank: int,
    world: int,
) -> StepRewards:
    """All ranks' rewards in slot order (`train`/`parsed`: this rank's groups × K). Raises on every rank when any
    rank's reward calls failed, so no rank waits forever or trains on a partial step."""
    k = len(train[0]) if train else 0
    local = torch.full((len(train), k, 2), math.nan, dtype=torch.float64)
    for gi, (rs, ps) in enumerate(zip(train, parsed, strict=True)):
        for j, (r, p) in enumerate(zip(rs, ps, strict=True)):
            local[gi, j, 0] = math.nan if r is None else r
            local[gi, j, 1] = float(p)
    flat = torch.cat([local.reshape(-1), torch.tensor([float(failed is not None)], dtype=torch.float64)])
    if world > 1:
        parts = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(parts, flat)
    else:
        parts = [flat]
    failed_ranks = [r for r, t in enumerate(parts) if t[-1] > 0]
    if failed is not None:
        raise failed
    if failed_ranks:
        raise RewardServiceError(f"reward calls failed on rank {failed_ranks[0]}: the step is not trained")
    per_rank = [t[:-1].reshape(len(train), k, 2) for t in parts]
    out_train: list[list[float | None]] = []
    out_parsed: list[list[bool]] = []
    for s in range(world * len(train)):
        rows = per_rank[s % world][s // world]
        out_train.append([None if math.isnan(float(v)) else float(v) for v in rows[:, 0]])
        out_parsed.append([bool(v > 0) for v in rows[:, 1]])
    parsed_rewards = [
        r for rs, ps in zip(out_train, out_parsed, strict=True) for r, p in zip(rs, ps, strict=True) if p
    ]
    return StepRewards(out_train, out_parsed, [float(r) for r in parsed_rewards if r is not None])
