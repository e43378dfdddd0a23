"""Calibration of a critic's confidence against human scores: does "sure" mean "right"?

Per axis group (`edit.execution`, `edit.consistency`, `gen.instruction`), over the items the critic answered with a
confidence (`Judgement.confidence.p`, the probability of the digit it wrote; parse failures and answers without a
confidence are left out, and counted in `n_without`):

- `deciles`: items sorted by confidence and cut into (up to) 10 equal-count bins, each with its mean confidence,
  MAE against the human score and exact-match rate — the reliability data (a calibrated critic's exact-match rate
  follows its confidence, its error falls as the confidence rises);
- `selective_mae`: the MAE of the most confident 50 / 80 / 100 % of the items (ties kept in bench order);
- `aurc`: the area under that risk–coverage curve, the mean over k = 1..n of the MAE of the k most confident items
  (lower is better; a confidence that ranks nothing gives about the plain MAE, one that ranks perfectly less).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

COVERAGES = (0.5, 0.8, 1.0)
N_BINS = 10


class ConfidenceBin(BaseModel):
    confidence: float = Field(description="mean confidence of the bin's items")
    mae: float
    accuracy: float = Field(description="exact-match rate")
    n: int


class CalibrationMetrics(BaseModel):
    n: int = Field(description="items with a score and a confidence")
    n_without: int = Field(description="items left out: no score (parse failure) or no confidence")
    mean_confidence: float
    deciles: list[ConfidenceBin]
    selective_mae: dict[str, float] = Field(
        description="coverage ('50', '80', '100' %) → MAE of the most confident"
    )
    aurc: float = Field(description="area under the risk (MAE) – coverage curve")
    curve: list[list[float]] = Field(description="[coverage, MAE of the most confident] at 5 % steps (plots)")


def _cov_key(c: float) -> str:
    return f"{round(c * 100):d}"


def selective_mae(errors: Sequence[float], confidence: Sequence[float], coverage: float) -> float:
    """MAE of the `coverage` fraction (at least one item) of the items with the highest confidence."""
    err = np.abs(np.asarray(errors, dtype=float))
    order = np.argsort(-np.asarray(confidence, dtype=float), kind="stable")
    k = max(1, math.ceil(coverage * err.size - 1e-9))
    return float(err[order[:k]].mean())


def calibration_metrics(
    human: Sequence[int], predicted: Sequence[int | None], confidence: Sequence[float | None]
) -> CalibrationMetrics | None:
    """Calibration of one group; None when no item has both a score and a confidence."""
    keep = [
        (int(h), int(p), float(c))
        for h, p, c in zip(human, predicted, confidence, strict=True)
        if p is not None and c is not None and not math.isnan(c)
    ]
    if not keep:
        return None
    h = np.array([k[0] for k in keep], dtype=float)
    p = np.array([k[1] for k in keep], dtype=float)
    c = np.array([k[2] for k in keep], dtype=float)
    err = np.abs(p - h)
    order = np.argsort(c, kind="stable")
    bins = [b for b in np.array_split(order, min(N_BINS, len(keep))) if b.size]
    deciles = [
        ConfidenceBin(
            confidence=round(float(c[b].mean()), 6),
            mae=round(float(err[b].mean()), 6),
            accuracy=round(float((err[b] == 0).mean()), 6),
            n=int(b.size),
        )
        for b in bins
    ]
    desc = np.argsort(-c, kind="stable")
    risk = np.cumsum(err[desc]) / np.arange(1, err.size + 1)
    return CalibrationMetrics(
        n=len(keep),
        n_without=len(human) - len(keep),
        mean_confidence=round(float(c.mean()), 6),
        deciles=deciles,
        selective_mae={_cov_key(cv): round(selective_mae(err, c, cv), 6) for cv in COVERAGES},
        aurc=round(float(risk.mean()), 6),
        curve=[
            [round(cv, 2), round(float(risk[max(1, math.ceil(cv * err.size - 1e-9)) - 1]), 6)]
            for cv in np.linspace(0.05, 1.0, 20)
        ],
    )
