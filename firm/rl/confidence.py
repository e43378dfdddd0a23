"""`reward.low_confidence`: what RL does with rewards the critic was unsure of (`RewardBreakdown.confidence.p`).

A sample is *low-confidence* when its reward has a confidence and it is below `reward.confidence_threshold`, or
(with `reward.confidence_coverage` = c) strictly below the confidence of its group's ⌈c·K⌉-th most confident
sample — so `confidence_coverage: 0.9` drops the least confident 10 % of each group, and a critic whose confidence
is the same for every sample flags nothing (ties are never cut). A reward without a confidence (not parsed, or a
reward with none, e.g. brightness) is never low-confidence: the parse-failure policy decides about it.

- `keep` (default): nothing changes (the confidence is still logged);
- `drop`: a low-confidence sample's reward is removed before the group advantages (as a `skip`ped parse failure:
  no advantage, no part in its group's baseline);
- `discount`: its advantage is multiplied by its confidence p.

Logged: `reward/confidence_mean` (over samples with a confidence) and `reward/dropped_low_confidence` (flagged
samples, dropped or discounted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

LowConfidence = Literal["keep", "drop", "discount"]


def low_confidence_flags(
    confidence: Sequence[float | None], threshold: float | None = None, coverage: float | None = None
) -> list[bool]:
    """Per sample of one group: is it low-confidence (see the module docstring)?"""
    flags = [False] * len(confidence)
    known = [(i, float(c)) for i, c in enumerate(confidence) if c is not None and not math.isnan(c)]
    if threshold is not None:
        for i, c in known:
            flags[i] = flags[i] or c < threshold
    if coverage is not None and known:
        ranked = sorted((c for _, c in known), reverse=True)
        cutoff = ranked[max(1, math.ceil(coverage * len(confidence) - 1e-9)) - 1]
        for i, c in known:
            flags[i] = flags[i] or c < cutoff
    return flags


@dataclass
class LowConfidencePlan:
    train: list[float | None]  # the group's training rewards after `drop`
    weights: list[float]  # advantage multipliers (`discount`; 1 otherwise)
    flagged: list[bool]


def apply_low_confidence(
    train: Sequence[float | None],
    confidence: Sequence[float | None],
    mode: LowConfidence,
    threshold: float | None = None,
    coverage: float | None = None,
) -> LowConfidencePlan:
    """One group's training rewards and advantage weights under `mode`."""
    flags = low_confidence_flags(confidence, threshold, coverage) if mode != "keep" else [False] * len(train)
    out = list(train)
    weights = [1.0] * len(train)
    for i, flagged in enumerate(flags):
        if not flagged:
            continue
        if mode == "drop":
            out[i] = None
        elif mode == "discount":
            weights[i] = float(confidence[i])  # type: ignore[arg-type]
    return LowConfidencePlan(out, weights, flags)
