"""Records shared across FIRM's stages (curation, critic, bench, serving, RL).

Names follow the paper: an *edit* sample is (source image, edited image, instruction) judged on *execution* and
*consistency*; a *gen* sample is (prompt, image) judged on *instruction* following and *quality*. A critic's answer
is a `Judgement`; rewards are reported as a `RewardBreakdown`. Stage-specific records live next to their stage and
reuse these types.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Task = Literal["edit", "gen"]
Axis = Literal["execution", "consistency", "instruction", "quality"]
ParseStatus = Literal["ok", "unparseable", "out_of_range", "truncated"]
Readout = Literal["text", "expected"]

EDIT_AXES: tuple[Axis, ...] = ("execution", "consistency")
GEN_AXES: tuple[Axis, ...] = ("instruction", "quality")
AXES_BY_TASK: dict[str, tuple[Axis, ...]] = {"edit": EDIT_AXES, "gen": GEN_AXES}


class Record(BaseModel):
    """Base for FIRM records: strict about unknown fields so typos surface at the boundary."""

    model_config = ConfigDict(extra="forbid")


def _non_empty(v: str, what: str) -> str:
    if not v or not v.strip():
        raise ValueError(f"{what} must not be empty")
    return v


class EditSample(Record):
    """An image edit to be judged: the source image, the edited image and the instruction."""

    id: str
    source_image: str = Field(description="URI or path of the source (pre-edit) image")
    edited_image: str = Field(description="URI or path of the edited image")
    instruction: str

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, v: str) -> str:
        return _non_empty(v, "instruction")


class GenSample(Record):
    """A generated image to be judged against its prompt."""

    id: str
    prompt: str
    image: str = Field(description="URI or path of the generated image")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _non_empty(v, "prompt")


class Confidence(Record):
    """How sure the critic was, read from its digit distribution at the score position (`firm.rewards.confidence`).

    A judgement's: `p` the probability of the score it wrote, `entropy` (nats; 0 = certain, ln 5 ≈ 1.609 =
    uniform over 1..5) and `std` (raw 1..5 units) of that distribution, `probs` = P(score = 1..5); for quality, of
    min(s1, s2, s3) with the three sub-scores' own in `sub`. A reward's: the joint of the axes that enter it
    (`p` = product, `entropy` = sum, `std` = the reward's own, in reward units) with `axes` = each axis's `p`.
    """

    p: float = Field(
        ge=0.0, le=1.0, description="probability of the chosen score (what thresholds and rankings use)"
    )
    entropy: float = Field(ge=0.0, description="entropy of the score distribution, nats")
    std: float = Field(ge=0.0, description="std of the score under the distribution")
    probs: list[float] | None = Field(default=None, description="judgement: P(score = 1..5)")
    sub: list[Confidence] | None = Field(default=None, description="quality: per sub-score")
    axes: dict[str, float] | None = Field(default=None, description="reward: `p` of each axis that enters it")


class Judgement(Record):
    """One critic answer for one (sample, axis).

    `score` is an int 1..5, or for the quality axis a list of three ints (aesthetics, technical, structure);
    it is None whenever `status` is not "ok" — a failed parse is never a silent 0.
    """

    task: Task
    axis: Axis
    status: ParseStatus
    score: int | list[int] | None = None
    expected_score: float | None = Field(
        default=None, description="probability-weighted score over the digit tokens 1..5 (expected readout)"
    )
    confidence: Confidence | None = Field(
        default=None, description="from the digit distribution at the score; None whenever the score is None"
    )
    reasoning: str = ""
    raw_text: str = ""
    parsed_from: str | None = Field(default=None, description="which parser rule produced the score")
    sample_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class RewardBreakdown(Record):
    """A Base-and-Bonus reward with its components (all sub-scores normalised to [0,1] by (s-1)/4).

    `reward` is None when a required judgement failed to parse and the policy is `skip`.
    Raw 1..5 scores are kept alongside the normalised ones for monitoring.
    """

    task: Task
    formulation: str
    reward: float | None
    status: str = Field(description="'ok' or which axis failed to parse, e.g. 'unparseable:execution'")
    execution: float | None = None
    consistency: float | None = None
    instruction: float | None = None
    quality: float | None = None
    raw_scores: dict[str, float | list[int] | None] = Field(default_factory=dict)
    reasoning: dict[str, str] = Field(default_factory=dict)
    confidence: Confidence | None = Field(
        default=None, description="joint confidence of the axes entering the reward; None when any is missing"
    )
