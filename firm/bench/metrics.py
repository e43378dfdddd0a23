"""FIRM-Bench metrics: how close a critic's 1–5 scores are to human scores.

Groups (the paper's table): `edit.execution`, `edit.consistency`, `edit.overall` — the **pooled** MAE over all edit
items (sample-weighted, NOT the mean of the two axis MAEs) — and `gen.easy`, `gen.hard`, `gen.overall` (pooled too).

Per group: `mae` (the paper's metric), `n`, `accuracy` (exact match), `within1` (|error| ≤ 1), `pearson`,
`spearman` (average ranks for ties), `bias` (mean signed error, critic − human: > 0 means the critic is lenient),
`ci95` (seeded percentile-bootstrap 95% interval of the MAE), `parse_failures`, and a 5×5 `confusion` matrix
(rows = human score 1..5, columns = critic score 1..5).

Parse failures (`score: null`) are scored by an explicit policy so a critic cannot improve its MAE by refusing to
answer: `worst` (default) substitutes the score farthest from the human score (1 for human ≥ 3, else 5; human 3
is a tie between 1 and 5 and gets 1), `exclude` drops them (then `n` counts only the answered items).
`parse_failures` is always the number of failures among the group's items.

Calibration (`calibration`, `firm.bench.calibration`): where the predictions carry the critic's confidence, per
axis (`edit.execution`, `edit.consistency`, `gen.instruction`) the MAE by confidence decile, the exact-match rate
by decile, the selective MAE of the most confident 50/80/100 % and the area under the risk–coverage curve.

Undefined numbers are `null` (JSON) / `None`: a correlation when either side is constant (zero variance, e.g. a
critic that always answers 3) or fewer than 2 items; a group with no items is `null` as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from firm.bench.calibration import CalibrationMetrics, calibration_metrics
from firm.bench.records import HumanScore
from firm.errors import InputError

ParseFailurePolicy = Literal["worst", "exclude"]
PARSE_FAILURE_POLICIES: tuple[str, ...] = ("worst", "exclude")
DEFAULT_BOOTSTRAP = 1000
EDIT_GROUPS = ("execution", "consistency", "overall")
GEN_GROUPS = ("easy", "hard", "overall")


class GroupMetrics(BaseModel):
    """All numbers for one group of items."""

    mae: float
    n: int = Field(description="items the metrics are computed on (answered + substituted under 'worst')")
    accuracy: float
    within1: float
    pearson: float | None
    spearman: float | None
    bias: float
    ci95: list[float] | None = Field(description="[low, high] bootstrap interval of the MAE; null when n < 2")
    parse_failures: int
    confusion: list[list[int]]


class BenchReport(BaseModel):
    """The report: `edit.{execution,consistency,overall}`, `gen.{easy,hard,overall}` and how it was computed."""

    edit: dict[str, GroupMetrics | None]
    gen: dict[str, GroupMetrics | None]
    calibration: dict[str, CalibrationMetrics | None] = Field(
        default_factory=dict,
        description="`task.axis` → calibration of the critic's confidence (None: no confidence)",
    )
    meta: dict[str, object] = Field(default_factory=dict)

    def mae(self, task: str, group: str) -> float | None:
        g = getattr(self, task).get(group)
        return None if g is None else g.mae

    def flat_metrics(self) -> dict[str, float]:
        """`mae/<task>/<group>`, `within1/...`, `pearson/...` and `parse_failure_rate/<task>/<group>` for every
        group with items (what a pipeline's bench step logs as KFP Metrics)."""
        out: dict[str, float] = {}
        for task in ("edit", "gen"):
            for group, g in getattr(self, task).items():
                if g is None or g.n == 0:
                    continue
                out[f"mae/{task}/{group}"] = g.mae
                out[f"within1/{task}/{group}"] = g.within1
                if g.pearson is not None:
                    out[f"pearson/{task}/{group}"] = g.pearson
                out[f"parse_failure_rate/{task}/{group}"] = g.parse_failures / g.n
        for key, c in self.calibration.items():
            if c is None:
                continue
            where = key.replace(".", "/")
            for cov, mae in c.selective_mae.items():
                out[f"selective_mae_{cov}/{where}"] = mae
            out[f"aurc/{where}"] = c.aurc
            out[f"confidence_mean/{where}"] = c.mean_confidence
        return out


def worst_score(human: int) -> int:
    """The score farthest from `human` on the 1..5 scale (ties at human=3 → 1)."""
    return 1 if human >= 3 else 5


def _nan_to_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None when fewer than 2 items or either side is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return None
    r = float(np.corrcoef(a, b)[0, 1])
    return _nan_to_none(max(-1.0, min(1.0, r)))


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata(method='average'))."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=float)
    sorted_a = a[order]
    i = 0
    while i < a.size:
        j = i
        while j + 1 < a.size and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho = Pearson on average ranks; None when undefined."""
    if len(x) < 2:
        return None
    return pearson(rankdata(x), rankdata(y))


def bootstrap_mae_ci(
    errors: Sequence[float], *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Percentile bootstrap interval of mean(|errors|): resample items with replacement, seeded."""
    e = np.abs(np.asarray(errors, dtype=float))
    if e.size < 2 or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, e.size, size=(n_boot, e.size))
    means = e[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return [round(float(lo), 6), round(float(hi), 6)]


def group_metrics(
    human: Sequence[int],
    predicted: Sequence[int | None],
    *,
    policy: ParseFailurePolicy = "worst",
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> GroupMetrics | None:
    """Metrics for paired human/critic scores; `None` entries in `predicted` are parse failures."""
    if len(human) != len(predicted):
        raise InputError(f"{len(human)} human scores but {len(predicted)} predictions")
    if policy not in PARSE_FAILURE_POLICIES:
        raise InputError(f"unknown parse-failure policy {policy!r}; expected worst or exclude")
    if not human:
        return None
    failures = sum(p is None for p in predicted)
    pairs: list[tuple[int, int]] = []
    for h, p in zip(human, predicted, strict=True):
        if p is None:
            if policy == "exclude":
                continue
            p = worst_score(h)
        pairs.append((int(h), int(p)))
    confusion = [[0] * 5 for _ in range(5)]
    if not pairs:  # everything failed and was excluded: MAE is undefined; report the failures
        return GroupMetrics(
            mae=float("nan"),
            n=0,
            accuracy=float("nan"),
            within1=float("nan"),
            pearson=None,
            spearman=None,
            bias=float("nan"),
            ci95=None,
            parse_failures=failures,
            confusion=confusion,
        )
    h_arr = np.array([h for h, _ in pairs], dtype=float)
    p_arr = np.array([p for _, p in pairs], dtype=float)
    err = p_arr - h_arr
    for h, p in pairs:
        confusion[h - 1][p - 1] += 1
    return GroupMetrics(
        mae=round(float(np.abs(err).mean()), 6),
        n=len(pairs),
        accuracy=round(float((err == 0).mean()), 6),
        within1=round(float((np.abs(err) <= 1).mean()), 6),
        pearson=_round(pearson(p_arr, h_arr)),
        spearman=_round(spearman(p_arr, h_arr)),
        bias=round(float(err.mean()), 6),
        ci95=bootstrap_mae_ci(err, n_boot=n_boot, seed=seed),
        parse_failures=failures,
        confusion=confusion,
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def check_ids(humans: Sequence[HumanScore], predictions: Mapping[str, int | None], *, what: str = "") -> None:
    """Ids present in one side but not the other are an `InputError` that lists them."""
    hids = {h.id for h in humans}
    pids = set(predictions)
    only_h, only_p = sorted(hids - pids), sorted(pids - hids)
    if only_h or only_p:
        parts = []
        if only_h:
            parts.append(f"{len(only_h)} id(s) without a prediction: {_show(only_h)}")
        if only_p:
            parts.append(f"{len(only_p)} id(s) without a human score: {_show(only_p)}")
        raise InputError(
            f"{what + ': ' if what else ''}ids differ between predictions and human scores; "
            + "; ".join(parts)
        )


def _show(ids: Sequence[str], k: int = 20) -> str:
    shown = ", ".join(ids[:k])
    return shown + (f" … (+{len(ids) - k} more)" if len(ids) > k else "")


def compute_report(
    humans: Sequence[HumanScore],
    predictions: Mapping[str, int | None],
    *,
    policy: ParseFailurePolicy = "worst",
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidences: Mapping[str, float | None] | None = None,
) -> BenchReport:
    """The full FIRM-Bench report for human scores and a {id: score|None} map with exactly the same ids;
    `confidences` ({id: the critic's confidence | None}) adds the calibration per axis."""
    check_ids(humans, predictions)

    def pick(pred) -> GroupMetrics | None:  # type: ignore[no-untyped-def]
        sel = [h for h in humans if pred(h)]
        return group_metrics(
            [h.human_score for h in sel],
            [predictions[h.id] for h in sel],
            policy=policy,
            n_boot=n_boot,
            seed=seed,
        )

    edit = {
        "execution": pick(lambda h: h.task == "edit" and h.axis == "execution"),
        "consistency": pick(lambda h: h.task == "edit" and h.axis == "consistency"),
        "overall": pick(lambda h: h.task == "edit"),
    }
    gen = {
        "easy": pick(lambda h: h.task == "gen" and h.difficulty == "easy"),
        "hard": pick(lambda h: h.task == "gen" and h.difficulty == "hard"),
        "overall": pick(lambda h: h.task == "gen"),
    }
    meta: dict[str, object] = {
        "parse_failure_policy": policy,
        "n_items": len(humans),
        "bootstrap": {"n": n_boot, "seed": seed, "level": 0.95},
        "parse_failures": sum(predictions[h.id] is None for h in humans),
    }
    calibration: dict[str, CalibrationMetrics | None] = {}
    if confidences is not None and any(v is not None for v in confidences.values()):
        for task, axis in (("edit", "execution"), ("edit", "consistency"), ("gen", "instruction")):
            sel = [h for h in humans if h.task == task and h.axis == axis]
            if sel:
                calibration[f"{task}.{axis}"] = calibration_metrics(
                    [h.human_score for h in sel],
                    [predictions[h.id] for h in sel],
                    [confidences.get(h.id) for h in sel],
                )
    return BenchReport(edit=edit, gen=gen, calibration=calibration, meta=meta)


def report_json(report: BenchReport) -> dict:
    """JSON-ready dict: NaN (all items excluded) becomes null."""

    def clean(o):  # type: ignore[no-untyped-def]
        if isinstance(o, float) and math.isnan(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    return clean(report.model_dump(mode="python"))
