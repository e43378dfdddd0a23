"""FIRM-Bench metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from firm.bench.metrics import (
    bootstrap_mae_ci,
    compute_report,
    group_metrics,
    pearson,
    rankdata,
    report_json,
    spearman,
    worst_score,
)
from firm.bench.records import HumanScore
from firm.errors import InputError


def H(i: str, task: str, axis: str, score: int, difficulty: str | None = None) -> HumanScore:
    return HumanScore(id=i, task=task, axis=axis, difficulty=difficulty, human_score=score)  # type: ignore[arg-type]


def test_mae_accuracy_within1_bias_confusion_by_hand() -> None:
    # errors (critic - human): 0, +1, -2, +3  → MAE 6/4, exact 1/4, within-1 2/4, bias (0+1-2+3)/4 = 0.5
    g = group_metrics([3, 4, 5, 1], [3, 5, 3, 4], n_boot=200)
    assert g is not None
    assert g.mae == pytest.approx(1.5)
    assert g.accuracy == pytest.approx(0.25)
    assert g.within1 == pytest.approx(0.5)
    assert g.bias == pytest.approx(0.5)
    assert g.n == 4 and g.parse_failures == 0
    # confusion[human-1][critic-1]
    assert (
        g.confusion[2][2] == 1
        and g.confusion[3][4] == 1
        and g.confusion[4][2] == 1
        and g.confusion[0][3] == 1
    )
    assert sum(map(sum, g.confusion)) == 4


def test_pooled_overall_is_sample_weighted_not_mean_of_axes() -> None:
    humans = [
        H("a", "edit", "execution", 5),
        H("b", "edit", "execution", 4),
        H("c", "edit", "execution", 3),
        H("d", "edit", "consistency", 1),
    ]
    preds = {"a": 5, "b": 4, "c": 1, "d": 3}  # execution errors 0,0,2 → 2/3; consistency error 2 → 2
    rep = compute_report(humans, preds, n_boot=100)
    assert rep.mae("edit", "execution") == pytest.approx(2 / 3, abs=1e-6)
    assert rep.mae("edit", "consistency") == pytest.approx(2.0)
    assert rep.mae("edit", "overall") == pytest.approx(1.0)  # (0+0+2+2)/4
    assert rep.mae("edit", "overall") != pytest.approx(
        (2 / 3 + 2.0) / 2
    )  # the mean of axis MAEs would be 1.333
    assert rep.edit["overall"].n == 4
    assert rep.gen == {"easy": None, "hard": None, "overall": None}  # no gen items → null groups


def test_gen_easy_hard_overall() -> None:
    humans = [
        H("e1", "gen", "instruction", 5, "easy"),
        H("h1", "gen", "instruction", 2, "hard"),
        H("h2", "gen", "instruction", 4, "hard"),
    ]
    rep = compute_report(humans, {"e1": 4, "h1": 5, "h2": 4}, n_boot=100)
    assert rep.mae("gen", "easy") == pytest.approx(1.0)
    assert rep.mae("gen", "hard") == pytest.approx(1.5)
    assert rep.mae("gen", "overall") == pytest.approx(4 / 3, abs=1e-6)


def test_worst_score_is_farthest() -> None:
    assert [worst_score(h) for h in (1, 2, 3, 4, 5)] == [5, 5, 1, 1, 1]
    for h in range(1, 6):
        assert abs(worst_score(h) - h) == max(abs(k - h) for k in range(1, 6))


def test_parse_failure_policy_worst_vs_exclude() -> None:
    human, pred = [5, 1, 3], [5, None, None]
    worst = group_metrics(human, pred, policy="worst", n_boot=100)
    excl = group_metrics(human, pred, policy="exclude", n_boot=100)
    assert worst is not None and excl is not None
    # worst: human 1 → critic 5 (err 4), human 3 → critic 1 (err 2): MAE (0+4+2)/3
    assert worst.mae == pytest.approx(2.0) and worst.n == 3 and worst.parse_failures == 2
    assert excl.mae == pytest.approx(0.0) and excl.n == 1 and excl.parse_failures == 2
    # refusing to answer never beats answering honestly under the default policy
    honest = group_metrics(human, [5, 2, 4], n_boot=100)
    assert honest is not None and honest.mae < worst.mae


def test_all_failures_excluded_gives_null_numbers() -> None:
    g = group_metrics([3, 4], [None, None], policy="exclude", n_boot=100)
    assert g is not None and g.n == 0 and g.parse_failures == 2 and math.isnan(g.mae)
    humans = [H("a", "edit", "execution", 3), H("b", "edit", "execution", 4)]
    doc = report_json(compute_report(humans, {"a": None, "b": None}, policy="exclude", n_boot=10))
    assert doc["edit"]["execution"]["mae"] is None and doc["edit"]["execution"]["parse_failures"] == 2


def test_pearson_spearman_by_hand() -> None:
    # x=[1,2,3], y=[1,2,4]: r = 3 / sqrt(2 * 42/9)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert spearman([1, 2, 3], [1, 2, 4]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert list(rankdata([10, 10, 20, 5])) == [2.5, 2.5, 4.0, 1.0]
    # ties: ranks x=[1.5,1.5,3], y=[1,2,3] → r = 1.5/sqrt(1.5*2)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3.0))


def test_constant_predictions_give_null_correlation() -> None:
    g = group_metrics([1, 2, 3, 4, 5], [3, 3, 3, 3, 3], n_boot=100)
    assert g is not None and g.pearson is None and g.spearman is None
    assert g.mae == pytest.approx(6 / 5)
    humans = [H(str(i), "gen", "instruction", s, "easy") for i, s in enumerate([1, 2, 3, 4, 5])]
    doc = report_json(compute_report(humans, {str(i): 3 for i in range(5)}, n_boot=50))
    assert doc["gen"]["easy"]["pearson"] is None and doc["gen"]["easy"]["spearman"] is None
    assert pearson([1], [2]) is None


def test_bootstrap_ci_contains_mae_and_is_seeded() -> None:
    human = [1, 2, 3, 4, 5, 3, 2, 4, 5, 1, 2, 3]
    pred = [2, 2, 5, 4, 3, 3, 1, 4, 5, 3, 2, 4]
    g = group_metrics(human, pred, n_boot=500, seed=7)
    assert g is not None and g.ci95 is not None
    lo, hi = g.ci95
    assert lo <= g.mae <= hi and lo < hi
    errs = [p - h for h, p in zip(human, pred, strict=True)]
    assert bootstrap_mae_ci(errs, n_boot=500, seed=7) == g.ci95
    assert bootstrap_mae_ci([1.0], n_boot=100) is None  # one item: no interval


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="ids differ"):
        compute_report([H("a", "edit", "execution", 3)], {"b": 3})
    with pytest.raises(InputError, match="policy"):
        group_metrics([1], [1], policy="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axis"):
        H("a", "edit", "instruction", 3)
    with pytest.raises(ValueError):
        H("a", "gen", "instruction", 6, "easy")
