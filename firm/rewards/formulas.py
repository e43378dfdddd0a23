"""Base-and-Bonus rewards from critic judgements (pure functions, no model code).

Every raw critic score s ∈ [1, 5] is normalised to [0, 1] by ``(s − 1) / 4``. With E, C, I, Q normalised:

- **CME** (editing, Consistency-Modulated Execution): ``R = E · (w_base + w_bonus · C)``, defaults 0.6 / 0.4.
  Execution is the base, consistency only a bonus on top of it: an untouched copy (E = 0, C = 1) earns 0, a perfect
  edit that wrecks the rest of the image (E = 1, C = 0) earns 0.6.
- **QMA** (generation, Quality-Modulated Alignment): ``R = I · (w_base + w_bonus · Q)``, defaults 0.4 / 0.6, where
  ``Q = (min(s1, s2, s3) − 1) / 4`` is the weakest of the three quality sub-scores (aesthetics, technical,
  structure).
- Ablations (editing): ``sum`` — ``R = w_base · E + w_bonus · C`` (e.g. 0.5/0.5 or 0.6/0.4), and ``guard`` — the
  same weighted sum with the consistency bonus dropped whenever the raw execution score is ≤ ``guard_threshold``.

Weights must be non-negative and sum to 1, so every reward lies in [0, 1].

A judgement that failed to parse never turns into a silent 0. `ParseFailurePolicy` decides: ``skip`` (default) →
``reward=None`` so the RL trainer drops the sample; ``min_reward`` → ``reward=0.0`` with the failure named in
``status``; ``raise`` → `firm.errors.ParseError`.

Each breakdown also carries the reward's `confidence`: the joint of the confidences of the axes that enter the
formula (`firm.rewards.confidence.reward_confidence`; None when any of them has none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from firm.errors import ConfigError, InputError, ParseError
from firm.rewards.confidence import reward_confidence
from firm.schemas import Judgement, Readout, RewardBreakdown

SCORE_MIN, SCORE_MAX = 1.0, 5.0
EditFormulation = Literal["cme", "sum", "guard"]
EDIT_FORMULATIONS: tuple[str, ...] = ("cme", "sum", "guard")


class ParseFailurePolicy(StrEnum):
    """What a reward function does when a required judgement did not parse."""

    RAISE = "raise"
    MIN_REWARD = "min_reward"
    SKIP = "skip"


# --------------------------------------------------------------------------------------------------------------
# Scalar formulas


def normalize_score(s: float, name: str = "score") -> float:
    """Map a raw critic score in [1, 5] to [0, 1] by (s − 1) / 4; anything else raises `InputError`."""
    if isinstance(s, bool) or not isinstance(s, int | float):
        raise InputError(f"{name} must be a number in {SCORE_MIN:g}..{SCORE_MAX:g}, got {s!r}")
    if math.isnan(s) or not SCORE_MIN <= s <= SCORE_MAX:
        raise InputError(f"{name} must be in {SCORE_MIN:g}..{SCORE_MAX:g}, got {s!r}")
    return (float(s) - SCORE_MIN) / (SCORE_MAX - SCORE_MIN)


def quality_score(sub_scores: Sequence[float], name: str = "quality") -> float:
    """Q = (min(s1, s2, s3) − 1) / 4: the weakest of the three raw quality sub-scores, normalised."""
    if isinstance(sub_scores, str | bytes) or len(sub_scores) != 3:
        raise InputError(
            f"{name} needs exactly three sub-scores (aesthetics, technical, structure), got {sub_scores!r}"
        )
    return min(normalize_score(s, f"{name}[{i}]") for i, s in enumerate(sub_scores))


def _unit(x: float, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or math.isnan(x) or not 0.0 <= x <= 1.0:
        raise InputError(f"{name} must be a normalised score in [0, 1], got {x!r}")
    return float(x)


def _weights(w_base: float, w_bonus: float) -> None:
    for name, w in (("w_base", w_base), ("w_bonus", w_bonus)):
        if isinstance(w, bool) or not isinstance(w, int | float) or math.isnan(w) or w < 0:
            raise ConfigError(f"{name} must be a non-negative number, got {w!r}")
    if not math.isclose(w_base + w_bonus, 1.0, abs_tol=1e-6):
        raise ConfigError(f"w_base + w_bonus must be 1 (got {w_base} + {w_bonus}) so rewards stay in [0, 1]")


def cme(e01: float, c01: float, w_base: float = 0.6, w_bonus: float = 0.4) -> float:
    """CME = E · (w_base + w_bonus · C), with E, C normalised execution / consistency in [0, 1]."""
    e, c = _unit(e01, "execution"), _unit(c01, "consistency")
    _weights(w_base, w_bonus)
    return e * (w_base + w_bonus * c)


def weighted_sum(e01: float, c01: float, w_base: float = 0.6, w_bonus: float = 0.4) -> float:
    """Ablation: R = w_base · E + w_bonus · C (the paper compares 0.5/0.5 and 0.6/0.4)."""
    e, c = _unit(e01, "execution"), _unit(c01, "consistency")
    _weights(w_base, w_bonus)
    return w_base * e + w_bonus * c


def guarded(
    e01: float, c01: float, w_base: float = 0.6, w_bonus: float = 0.4, guard_threshold: float = 2.0
) -> float:
    """Ablation: the weighted sum, but the consistency bonus is dropped when the RAW execution score
    (1 + 4·E) is ≤ `guard_threshold` (a raw 1..5 score): R = w_base·E + [E_raw > t] · w_bonus·C."""
    e, c = _unit(e01, "execution"), _unit(c01, "consistency")
    _weights(w_base, w_bonus)
    t01 = normalize_score(guard_threshold, "guard_threshold")
    bonus = w_bonus * c if e > t01 + 1e-12 else 0.0
    return w_base * e + bonus


def qma(i01: float, q01: float, w_base: float = 0.4, w_bonus: float = 0.6) -> float:
    """QMA = I · (w_base + w_bonus · Q), with I instruction following and Q = min quality sub-score, in [0, 1]."""
    i, q = _unit(i01, "instruction"), _unit(q01, "quality")
    _weights(w_base, w_bonus)
    return i * (w_base + w_bonus * q)


# --------------------------------------------------------------------------------------------------------------
# Configs


class _Weights(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    w_base: float = Field(ge=0.0, le=1.0)
    w_bonus: float = Field(ge=0.0, le=1.0)
    readout: Readout = Field(
        default="text", description="'text': parsed score; 'expected': digit-probability mean"
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> _Weights:
        if not math.isclose(self.w_base + self.w_bonus, 1.0, abs_tol=1e-6):
            raise ValueError(f"w_base + w_bonus must be 1, got {self.w_base} + {self.w_bonus}")
        return self


class EditRewardConfig(_Weights):
    """Editing reward. `formulation`: 'cme' (paper default), 'sum' (weighted sum) or 'guard' (execution-guarded sum).
    `w_base` weights execution, `w_bonus` consistency. `guard_threshold` is a raw 1..5 execution score at or below
    which the guard variant drops the consistency bonus."""

    formulation: EditFormulation = "cme"
    w_base: float = Field(default=0.6, ge=0.0, le=1.0)
    w_bonus: float = Field(default=0.4, ge=0.0, le=1.0)
    guard_threshold: float = Field(default=2.0, ge=SCORE_MIN, le=SCORE_MAX)


class GenRewardConfig(_Weights):
    """Generation reward (QMA). `w_base` weights instruction following, `w_bonus` the quality modulation."""

    w_base: float = Field(default=0.4, ge=0.0, le=1.0)
    w_bonus: float = Field(default=0.6, ge=0.0, le=1.0)


def edit_formula(e01: float, c01: float, config: EditRewardConfig) -> float:
    """Apply the configured editing formulation to normalised scores."""
    if config.formulation == "cme":
        return cme(e01, c01, config.w_base, config.w_bonus)
    if config.formulation == "sum":
        return weighted_sum(e01, c01, config.w_base, config.w_bonus)
    return guarded(e01, c01, config.w_base, config.w_bonus, config.guard_threshold)


# --------------------------------------------------------------------------------------------------------------
# Judgements → rewards


def _policy(policy: ParseFailurePolicy | str) -> ParseFailurePolicy:
    try:
        return ParseFailurePolicy(policy)
    except ValueError:
        known = ", ".join(p.value for p in ParseFailurePolicy)
        raise ConfigError(f"unknown parse-failure policy {policy!r}; expected one of {known}") from None


def _check_axis(j: Judgement, task: str, axis: str) -> None:
    if not isinstance(j, Judgement):
        raise InputError(f"{axis} must be a Judgement, got {type(j).__name__}")
    if j.task != task or j.axis != axis:
        raise InputError(f"expected a {task}/{axis} judgement, got {j.task}/{j.axis} (sample {j.sample_id})")


def _raw(j: Judgement, readout: Readout) -> float | list[int] | None:
    """The raw score a reward uses, or None when the judgement failed."""
    if not j.ok:
        return None
    if readout == "expected" and j.expected_score is not None:
        return float(j.expected_score)
    if readout == "expected" and j.axis != "quality":
        raise InputError(
            f"readout 'expected' needs expected_score on the {j.axis} judgement (sample {j.sample_id}); "
            "score it with the expected readout or use readout 'text'"
        )
    if j.score is None:
        raise InputError(f"{j.axis} judgement has status ok but no score (sample {j.sample_id})")
    return j.score


def _failure(judgements: Iterable[Judgement]) -> str | None:
    failed = [f"{j.status}:{j.axis}" for j in judgements if not j.ok]
    return ",".join(failed) or None


def _on_failure(policy: ParseFailurePolicy, status: str, judgements: Sequence[Judgement]) -> float | None:
    if policy is ParseFailurePolicy.RAISE:
        bad = next(j for j in judgements if not j.ok)
        snippet = bad.raw_text[-200:].replace("\n", " ")
        raise ParseError(
            f"critic answer for {bad.task}/{bad.axis} (sample {bad.sample_id}) is {bad.status}: {snippet!r}"
        )
    return 0.0 if policy is ParseFailurePolicy.MIN_REWARD else None


def _single(raw: float | list[int] | None, axis: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, list):
        raise InputError(f"{axis} score must be a single 1..5 score, got {raw!r}")
    return normalize_score(raw, axis)


def edit_reward(
    execution: Judgement,
    consistency: Judgement,
    config: EditRewardConfig | None = None,
    policy: ParseFailurePolicy | str = ParseFailurePolicy.SKIP,
) -> RewardBreakdown:
    """The editing reward (CME by default) from an execution and a consistency judgement of the same edit."""
    config = config or EditRewardConfig()
    pol = _policy(policy)
    _check_axis(execution, "edit", "execution")
    _check_axis(consistency, "edit", "consistency")
    raw_e, raw_c = _raw(execution, config.readout), _raw(consistency, config.readout)
    e01, c01 = _single(raw_e, "execution"), _single(raw_c, "consistency")
    status = _failure((execution, consistency))
    if status is not None or e01 is None or c01 is None:
        reward = _on_failure(pol, status or "unparseable", (execution, consistency))
    else:
        reward = edit_formula(e01, c01, config)
    return RewardBreakdown(
        task="edit",
        formulation=config.formulation,
        reward=reward,
        status=status or "ok",
        execution=e01,
        consistency=c01,
        raw_scores={"execution": raw_e, "consistency": raw_c},
        reasoning={"execution": execution.reasoning, "consistency": consistency.reasoning},
        confidence=reward_confidence(
            {"execution": execution.confidence, "consistency": consistency.confidence},
            lambda e, c: edit_formula(e, c, config),
        ),
    )


def _quality01(raw: float | list[int] | None) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, list):
        return quality_score(raw)
    return normalize_score(raw, "quality")  # expected readout: the critic's continuous limiting sub-score


def gen_reward(
    instruction: Judgement,
    quality: Judgement | None = None,
    config: GenRewardConfig | None = None,
    policy: ParseFailurePolicy | str = ParseFailurePolicy.SKIP,
) -> RewardBreakdown:
    """The generation reward: QMA from an instruction and a quality judgement, or I alone when quality is None
    (formulation 'instruction')."""
    config = config or GenRewardConfig()
    pol = _policy(policy)
    _check_axis(instruction, "gen", "instruction")
    judgements = [instruction]
    if quality is not None:
        _check_axis(quality, "gen", "quality")
        judgements.append(quality)
    raw_i = _raw(instruction, config.readout)
    raw_q = _raw(quality, config.readout) if quality is not None else None
    i01 = _single(raw_i, "instruction")
    q01 = _quality01(raw_q)
    status = _failure(judgements)
    formulation = "qma" if quality is not None else "instruction"
    if status is not None or i01 is None or (quality is not None and q01 is None):
        reward = _on_failure(pol, status or "unparseable", judgements)
    elif quality is None:
        reward = i01
    else:
        assert q01 is not None
        reward = qma(i01, q01, config.w_base, config.w_bonus)
    raw_scores: dict[str, float | list[int] | None] = {"instruction": raw_i}
    reasoning = {"instruction": instruction.reasoning}
    if quality is not None:
        raw_scores["quality"] = raw_q
        reasoning["quality"] = quality.reasoning
        confidence = reward_confidence(
            {"instruction": instruction.confidence, "quality": quality.confidence},
            lambda i, q: qma(i, q, config.w_base, config.w_bonus),
        )
    else:
        confidence = reward_confidence({"instruction": instruction.confidence}, lambda i: i)
    return RewardBreakdown(
        task="gen",
        formulation=formulation,
        reward=reward,
        status=status or "ok",
        instruction=i01,
        quality=q01,
        raw_scores=raw_scores,
        reasoning=reasoning,
        confidence=confidence,
    )


def edit_rewards(
    pairs: Iterable[tuple[Judgement, Judgement]],
    config: EditRewardConfig | None = None,
    policy: ParseFailurePolicy | str = ParseFailurePolicy.SKIP,
) -> list[RewardBreakdown]:
    """`edit_reward` over (execution, consistency) pairs."""
    return [edit_reward(e, c, config, policy) for e, c in pairs]


def gen_rewards(
    pairs: Iterable[tuple[Judgement, Judgement | None]],
    config: GenRewardConfig | None = None,
    policy: ParseFailurePolicy | str = ParseFailurePolicy.SKIP,
) -> list[RewardBreakdown]:
    """`gen_reward` over (instruction, quality-or-None) pairs."""
    return [gen_reward(i, q, config, policy) for i, q in pairs]
