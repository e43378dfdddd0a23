"""Confidence from hand-built digit distributions (firm.rewards.confidence) and its flow into reward breakdowns."""

from __future__ import annotations

import math

import pytest

from firm.rewards.confidence import (
    UNIFORM_ENTROPY,
    digit_confidence,
    digit_probs_from_logprobs,
    judgement_confidence,
    min_distribution,
    reward_confidence,
)
from firm.rewards.formulas import EditRewardConfig, edit_reward, gen_reward
from firm.schemas import Judgement


def test_certain_uniform_and_bimodal_distributions() -> None:
    certain = digit_confidence([0, 0, 0, 1, 0], 4)
    assert certain.p == 1.0 and certain.entropy == 0.0 and certain.std == 0.0
    assert certain.probs == [0, 0, 0, 1, 0]

    uniform = digit_confidence([1, 1, 1, 1, 1], 3)  # normalised here
    assert uniform.p == pytest.approx(0.2)
    assert uniform.entropy == pytest.approx(UNIFORM_ENTROPY) == pytest.approx(math.log(5))
    assert uniform.std == pytest.approx(math.sqrt(2.0))  # var of 1..5 uniform = 2

    bimodal = digit_confidence([0.5, 0, 0, 0, 0.5], 5)
    assert bimodal.p == pytest.approx(0.5)
    assert bimodal.entropy == pytest.approx(math.log(2))
    assert bimodal.std == pytest.approx(2.0)  # half at 1, half at 5: mean 3, std 2
    # the bimodal one is less sure of its score than a peaked one, whatever the mean says
    peaked = digit_confidence([0.025, 0.025, 0.9, 0.025, 0.025], 3)
    assert peaked.p > bimodal.p and peaked.std < bimodal.std and peaked.entropy < bimodal.entropy


def test_quality_confidence_is_that_of_the_minimum() -> None:
    sure = [0, 0, 0, 0, 1.0]
    unsure = [0, 0.5, 0, 0, 0.5]
    assert min_distribution([sure, sure, sure]) == pytest.approx([0, 0, 0, 0, 1])
    assert min_distribution([sure, unsure]) == pytest.approx([0, 0.5, 0, 0, 0.5])
    c = judgement_confidence([sure, unsure, sure], [5, 2, 5])
    assert c.p == pytest.approx(0.5) and c.std == pytest.approx(1.5)
    assert [s.p for s in c.sub or []] == pytest.approx([1.0, 0.5, 1.0])
    with pytest.raises(ValueError):
        judgement_confidence([sure], [5, 5, 5])


def test_top_k_logprobs_give_the_digit_distribution() -> None:
    ids = [16, 17, 18, 19, 20]
    top = {19: math.log(0.6), 18: math.log(0.2), 999: math.log(0.15)}  # "4", "3" and a non-digit
    assert digit_probs_from_logprobs(top, ids) == pytest.approx([0, 0, 0.25, 0.75, 0])
    assert digit_probs_from_logprobs({999: 0.0}, ids) is None


def _j(axis: str, task: str, score, probs) -> Judgement:
    conf = judgement_confidence(probs, score) if probs is not None else None
    return Judgement(task=task, axis=axis, status="ok", score=score, confidence=conf)


def test_reward_confidence_rule_cme_and_qma() -> None:
    certain4 = [[0, 0, 0, 1.0, 0]]
    split = [[0.5, 0, 0, 0, 0.5]]
    b = edit_reward(_j("execution", "edit", 4, certain4), _j("consistency", "edit", 5, split))
    assert b.confidence is not None
    assert b.confidence.p == pytest.approx(0.5) and b.confidence.axes == {
        "execution": 1.0,
        "consistency": 0.5,
    }
    assert b.confidence.entropy == pytest.approx(math.log(2))
    # reward std: E = 0.75 fixed, C ∈ {0, 1} → R ∈ {0.45, 0.75} with equal weight: std 0.15
    assert b.confidence.std == pytest.approx(0.15)
    # execution 1 (normalised 0): CME = 0 whatever consistency is — consistency's doubt leaves no spread
    zero = edit_reward(_j("execution", "edit", 1, [[1.0, 0, 0, 0, 0]]), _j("consistency", "edit", 5, split))
    assert zero.confidence is not None and zero.confidence.std == pytest.approx(0.0)
    assert zero.confidence.p == pytest.approx(0.5)
    g = gen_reward(_j("instruction", "gen", 4, certain4), _j("quality", "gen", [4, 4, 4], certain4 * 3))
    assert g.confidence is not None and g.confidence.p == pytest.approx(1.0) and g.confidence.std == 0.0
    only = gen_reward(_j("instruction", "gen", 5, split))
    assert only.confidence is not None and only.confidence.std == pytest.approx(0.5)
    # ablation formulations use the same rule
    s = edit_reward(
        _j("execution", "edit", 4, certain4),
        _j("consistency", "edit", 5, split),
        EditRewardConfig(formulation="sum"),
    )
    assert s.confidence is not None and s.confidence.std == pytest.approx(0.2)


def test_no_confidence_where_the_answer_did_not_parse() -> None:
    ok = _j("execution", "edit", 4, [[0, 0, 0, 1.0, 0]])
    failed = Judgement(task="edit", axis="consistency", status="unparseable")
    assert failed.confidence is None
    b = edit_reward(ok, failed)
    assert b.reward is None and b.confidence is None  # absent, not 0
    b = edit_reward(ok, failed, policy="min_reward")
    assert b.reward == 0.0 and b.confidence is None
    assert reward_confidence({"a": None}, lambda a: a) is None
    # a judgement scored without confidence (e.g. an engine without logprobs) gives a reward without one
    assert edit_reward(ok, _j("consistency", "edit", 5, None)).confidence is None
