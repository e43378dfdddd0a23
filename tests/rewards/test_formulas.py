"""Base-and-Bonus reward formulas (CME, QMA, ablations) and judgement → reward with parse-failure policies."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firm.errors import ConfigError, InputError, ParseError
from firm.rewards.formulas import (
    EditRewardConfig,
    GenRewardConfig,
    ParseFailurePolicy,
    cme,
    edit_reward,
    edit_rewards,
    gen_reward,
    gen_rewards,
    guarded,
    normalize_score,
    qma,
    quality_score,
    weighted_sum,
)
from firm.schemas import Judgement

RAW = [1, 2, 3, 4, 5]
N = {1: 0.0, 2: 0.25, 3: 0.5, 4: 0.75, 5: 1.0}


def test_normalize_score_values_and_rejects() -> None:
    assert [normalize_score(s) for s in RAW] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert normalize_score(3.4) == pytest.approx(0.6)
    for bad in (0, 6, 0.99, 5.01, -1, float("nan"), float("inf")):
        with pytest.raises(InputError, match=r"score must be in 1\.\.5"):
            normalize_score(bad)
    for bad in (None, "3", True):
        with pytest.raises(InputError):
            normalize_score(bad)  # type: ignore[arg-type]


# Hand-computed CME values on the full 5×5 grid: rows E = 1..5, columns C = 1..5.
CME_GRID = [
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [0.15, 0.175, 0.2, 0.225, 0.25],
    [0.3, 0.35, 0.4, 0.45, 0.5],
    [0.45, 0.525, 0.6, 0.675, 0.75],
    [0.6, 0.7, 0.8, 0.9, 1.0],
]


def test_cme_full_grid() -> None:
    for (ie, e), (ic, c) in itertools.product(enumerate(RAW), enumerate(RAW)):
        assert cme(N[e], N[c]) == pytest.approx(CME_GRID[ie][ic]), (e, c)


def test_cme_paper_examples() -> None:
    assert all(cme(0.0, N[c]) == 0.0 for c in RAW)  # nothing done → 0 whatever the consistency
    assert cme(N[1], N[5]) == 0.0  # an unchanged copy earns nothing
    assert cme(N[5], N[1]) == pytest.approx(0.6)  # perfect edit, wrecked consistency
    assert cme(N[5], N[5]) == 1.0


def test_weighted_sum_and_guard_grid() -> None:
    for e, c in itertools.product(RAW, RAW):
        ws = weighted_sum(N[e], N[c], 0.5, 0.5)
        assert ws == pytest.approx((N[e] + N[c]) / 2)
        g = guarded(N[e], N[c], 0.6, 0.4, guard_threshold=2)
        expected = 0.6 * N[e] + (0.4 * N[c] if e > 2 else 0.0)
        assert g == pytest.approx(expected), (e, c)
    # the ablation's weakness that CME and the guard fix: an unchanged copy is rewarded by the plain sum
    assert weighted_sum(N[1], N[5], 0.5, 0.5) == 0.5
    assert guarded(N[1], N[5]) == 0.0
    assert guarded(N[2], N[5]) == pytest.approx(0.15)
    assert guarded(N[3], N[5]) == pytest.approx(0.7)
    assert guarded(N[2], N[5], guard_threshold=1) == pytest.approx(0.55)


def test_qma_uses_min_quality() -> None:
    assert quality_score([4, 3, 5]) == 0.5
    assert quality_score([5, 5, 1]) == 0.0
    assert qma(N[5], quality_score([4, 3, 5])) == pytest.approx(0.7)
    assert qma(N[3], quality_score([5, 5, 1])) == pytest.approx(0.2)  # one bad sub-score drags Q to its floor
    assert qma(N[5], quality_score([5, 5, 5])) == 1.0
    assert all(qma(0.0, N[q]) == 0.0 for q in RAW)  # misaligned image → 0 whatever its quality
    for i, q in itertools.product(RAW, RAW):
        assert qma(N[i], N[q]) == pytest.approx(N[i] * (0.4 + 0.6 * N[q]))


def test_quality_score_rejects_bad_triples() -> None:
    with pytest.raises(InputError, match="three sub-scores"):
        quality_score([4, 3])
    with pytest.raises(InputError, match=r"quality\[2\] must be in 1..5"):
        quality_score([4, 3, 6])


def test_formula_inputs_and_weights_validated() -> None:
    with pytest.raises(InputError, match="execution must be a normalised score"):
        cme(1.5, 0.5)
    with pytest.raises(InputError, match="quality must be a normalised score"):
        qma(0.5, -0.1)
    with pytest.raises(ConfigError, match="must be 1"):
        cme(0.5, 0.5, 0.7, 0.4)
    with pytest.raises(ConfigError, match="non-negative"):
        qma(0.5, 0.5, -0.2, 1.2)
    with pytest.raises(ValueError, match="must be 1"):
        EditRewardConfig(w_base=0.5, w_bonus=0.4)
    with pytest.raises(ValueError):
        EditRewardConfig(formulation="product")  # type: ignore[arg-type]


unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
weight = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(a=unit, b=unit, d=unit, w=weight)
def test_properties_range_and_monotonic(a: float, b: float, d: float, w: float) -> None:
    lo, hi = min(b, d), max(b, d)
    for f in (cme, qma, weighted_sum, guarded):
        r = f(a, b, w, 1 - w)
        assert 0.0 <= r <= 1.0 + 1e-12
        # monotone non-decreasing in each input
        assert f(a, lo, w, 1 - w) <= f(a, hi, w, 1 - w) + 1e-12
        assert f(lo, a, w, 1 - w) <= f(hi, a, w, 1 - w) + 1e-12
    # the base gates the reward: zero base → zero reward for the multiplicative forms
    assert cme(0.0, b, w, 1 - w) == 0.0 and qma(0.0, b, w, 1 - w) == 0.0
    # multiplicative rewards never exceed their base
    assert cme(a, b, w, 1 - w) <= a + 1e-12 and qma(a, b, w, 1 - w) <= a + 1e-12


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.integers(1, 5), min_size=3, max_size=3), i=st.integers(1, 5), k=st.integers(0, 2))
def test_qma_lowering_any_sub_score_never_helps(scores: list[int], i: int, k: int) -> None:
    worse = list(scores)
    worse[k] = max(1, worse[k] - 1)
    assert qma(N[i], quality_score(worse)) <= qma(N[i], quality_score(scores))


# ------------------------------------------------------------------------------------------ judgements → rewards


def J(
    task: str, axis: str, score: object = None, status: str = "ok", expected: float | None = None
) -> Judgement:
    return Judgement(
        task=task,
        axis=axis,
        status=status,
        score=score if status == "ok" else None,  # type: ignore[arg-type]
        expected_score=expected,
        reasoning=f"{axis} rationale",
        raw_text=f"raw {axis} text",
        sample_id="s1",
    )


def test_edit_reward_cme_default() -> None:
    rb = edit_reward(J("edit", "execution", 5), J("edit", "consistency", 1))
    assert rb.reward == pytest.approx(0.6)
    assert (rb.task, rb.formulation, rb.status) == ("edit", "cme", "ok")
    assert (rb.execution, rb.consistency) == (1.0, 0.0)
    assert rb.raw_scores == {"execution": 5, "consistency": 1}
    assert rb.reasoning == {"execution": "execution rationale", "consistency": "consistency rationale"}


@pytest.mark.parametrize(
    ("formulation", "weights", "expected"),
    [
        ("cme", (0.6, 0.4), 0.4),
        ("sum", (0.5, 0.5), 0.5),
        ("sum", (0.6, 0.4), 0.5),
        ("guard", (0.6, 0.4), 0.3),
    ],
)
def test_edit_reward_formulations(formulation: str, weights: tuple[float, float], expected: float) -> None:
    cfg = EditRewardConfig(formulation=formulation, w_base=weights[0], w_bonus=weights[1], guard_threshold=3)
    rb = edit_reward(J("edit", "execution", 3), J("edit", "consistency", 3), cfg)
    assert rb.reward == pytest.approx(expected)
    assert rb.formulation == formulation


def test_edit_reward_expected_readout() -> None:
    cfg = EditRewardConfig(readout="expected")
    rb = edit_reward(J("edit", "execution", 4, expected=4.6), J("edit", "consistency", 3, expected=2.2), cfg)
    assert rb.execution == pytest.approx(0.9) and rb.consistency == pytest.approx(0.3)
    assert rb.reward == pytest.approx(0.9 * (0.6 + 0.4 * 0.3))
    assert rb.raw_scores["execution"] == pytest.approx(4.6)
    with pytest.raises(InputError, match="needs expected_score on the execution judgement"):
        edit_reward(J("edit", "execution", 4), J("edit", "consistency", 3, expected=2.0), cfg)


def test_parse_failure_policies() -> None:
    bad_e = J("edit", "execution", status="unparseable")
    good_c = J("edit", "consistency", 4)
    skip = edit_reward(bad_e, good_c)  # default policy: skip
    assert skip.reward is None and skip.status == "unparseable:execution"
    assert skip.execution is None and skip.consistency == 0.75  # what did parse is kept for monitoring
    low = edit_reward(bad_e, good_c, policy="min_reward")
    assert low.reward == 0.0 and low.status == "unparseable:execution"
    both = edit_reward(bad_e, J("edit", "consistency", status="out_of_range"), policy=ParseFailurePolicy.SKIP)
    assert both.status == "unparseable:execution,out_of_range:consistency" and both.reward is None
    with pytest.raises(
        ParseError, match=r"edit/execution \(sample s1\) is unparseable: 'raw execution text'"
    ):
        edit_reward(bad_e, good_c, policy="raise")
    with pytest.raises(ConfigError, match="unknown parse-failure policy 'zero'"):
        edit_reward(bad_e, good_c, policy="zero")
    g = gen_reward(J("gen", "instruction", 4), J("gen", "quality", status="unparseable"), policy="min_reward")
    assert g.reward == 0.0 and g.status == "unparseable:quality" and g.instruction == 0.75


def test_wrong_axis_is_rejected() -> None:
    with pytest.raises(InputError, match="expected a edit/execution judgement, got edit/consistency"):
        edit_reward(J("edit", "consistency", 4), J("edit", "consistency", 4))
    with pytest.raises(InputError, match="expected a gen/quality judgement"):
        gen_reward(J("gen", "instruction", 4), J("gen", "instruction", 4))
    with pytest.raises(InputError, match=r"single 1\.\.5 score"):
        edit_reward(J("edit", "execution", [4, 4, 4]), J("edit", "consistency", 4))


def test_gen_reward_qma_and_instruction_only() -> None:
    rb = gen_reward(J("gen", "instruction", 5), J("gen", "quality", [4, 3, 5]))
    assert (rb.formulation, rb.status) == ("qma", "ok")
    assert rb.reward == pytest.approx(0.7) and rb.quality == 0.5 and rb.instruction == 1.0
    assert rb.raw_scores == {"instruction": 5, "quality": [4, 3, 5]}
    only = gen_reward(J("gen", "instruction", 4))
    assert (only.formulation, only.reward, only.quality) == ("instruction", 0.75, None)
    custom = gen_reward(
        J("gen", "instruction", 5), J("gen", "quality", [3, 3, 3]), GenRewardConfig(w_base=1, w_bonus=0)
    )
    assert custom.reward == 1.0


def test_gen_reward_expected_readout() -> None:
    cfg = GenRewardConfig(readout="expected")
    rb = gen_reward(J("gen", "instruction", 4, expected=4.2), J("gen", "quality", [4, 3, 5]), cfg)
    # quality without an expected value falls back to its text triple (Q = min = 3 → 0.5)
    assert rb.instruction == pytest.approx(0.8) and rb.quality == 0.5
    assert rb.reward == pytest.approx(0.8 * (0.4 + 0.6 * 0.5))
    rb2 = gen_reward(
        J("gen", "instruction", 4, expected=4.2), J("gen", "quality", [4, 3, 5], expected=2.0), cfg
    )
    assert rb2.quality == pytest.approx(0.25)


def test_batch_helpers() -> None:
    pairs = [(J("edit", "execution", e), J("edit", "consistency", c)) for e, c in [(5, 1), (1, 5), (3, 3)]]
    assert [r.reward for r in edit_rewards(pairs)] == pytest.approx([0.6, 0.0, 0.4])
    gens = [(J("gen", "instruction", 5), None), (J("gen", "instruction", status="unparseable"), None)]
    assert [r.reward for r in gen_rewards(gens)] == [1.0, None]
