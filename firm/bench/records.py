"""FIRM-Bench records: a bench item with its human score, a critic's prediction, and a bare human score.

- `BenchItem` — one row of our bench layout (`bench.jsonl`): the inputs a critic needs (image references relative to
  the bench directory, the edit instruction or the generation prompt) plus the human 1–5 score.
- `HumanScore` — the `--human` rows of `firmctl bench score`: `{"id", "task", "axis", "difficulty", "human_score"}`.
- `Prediction` — the `--predictions` rows: `{"id", "score": k | null}`; `firmctl bench run` adds the judgement's
  status, raw text and reasoning so a report can be audited. `score: null` is a parse failure (never a silent 0).

Paper vocabulary: editing is judged on *execution* and *consistency*; generation on *instruction* following, split
into *easy* and *hard* prompts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from firm.schemas import ParseStatus, Record, Task

BenchAxis = Literal["execution", "consistency", "instruction"]
Difficulty = Literal["easy", "hard"]

AXES_FOR_TASK: dict[str, tuple[str, ...]] = {"edit": ("execution", "consistency"), "gen": ("instruction",)}
SCORE_MIN, SCORE_MAX = 1, 5


def _plain_int_score(v: object) -> object:
    """Scores are JSON integers (3 or 3.0): `true` or `"3"` would otherwise be coerced to a score silently."""
    if isinstance(v, bool | str):
        raise ValueError(f"score must be an integer 1..5, got {v!r}")
    return v


def _check_task_axis(task: str, axis: str, difficulty: str | None, item_id: str) -> None:
    if axis not in AXES_FOR_TASK[task]:
        allowed = " or ".join(AXES_FOR_TASK[task])
        raise ValueError(f"item {item_id}: task {task!r} has axis {allowed}, not {axis!r}")
    if task == "edit" and difficulty is not None:
        raise ValueError(f"item {item_id}: difficulty (easy|hard) is only defined for gen items")


class HumanScore(Record):
    """A human 1–5 score for one bench item (the ground truth of FIRM-Bench)."""

    id: str = Field(min_length=1)
    task: Task
    axis: BenchAxis
    difficulty: Difficulty | None = Field(default=None, description="easy|hard for gen items, null for edit")
    human_score: int = Field(ge=SCORE_MIN, le=SCORE_MAX)

    _plain_human_score = field_validator("human_score", mode="before")(_plain_int_score)

    @model_validator(mode="after")
    def _consistent(self) -> HumanScore:
        _check_task_axis(self.task, self.axis, self.difficulty, self.id)
        return self


class BenchItem(HumanScore):
    """One FIRM-Bench item: inputs and the human score.

    `images` are references relative to the bench directory (or absolute paths/URIs): for edits `[source, edited]`,
    for generation `[image]`. Edits carry an `instruction`, generation items a `prompt`.
    """

    images: list[str] = Field(min_length=1, max_length=2)
    instruction: str | None = None
    prompt: str | None = None
    source: str | None = Field(
        default=None, description="where the item came from (e.g. firm-bench-v1, synthetic)"
    )

    @model_validator(mode="after")
    def _inputs(self) -> BenchItem:
        if self.task == "edit":
            if len(self.images) != 2:
                raise ValueError(
                    f"edit item {self.id}: needs 2 images [source, edited], got {len(self.images)}"
                )
            if not (self.instruction and self.instruction.strip()):
                raise ValueError(f"edit item {self.id}: needs a non-empty instruction")
        else:
            if len(self.images) != 1:
                raise ValueError(f"gen item {self.id}: needs 1 image, got {len(self.images)}")
            if not (self.prompt and self.prompt.strip()):
                raise ValueError(f"gen item {self.id}: needs a non-empty prompt")
        return self

    def human(self) -> HumanScore:
        return HumanScore(
            id=self.id,
            task=self.task,
            axis=self.axis,
            difficulty=self.difficulty,
            human_score=self.human_score,
        )


class Prediction(Record):
    """A critic's integer score for one bench item; `score=None` means its answer could not be parsed."""

    id: str = Field(min_length=1)
    score: int | None = Field(default=None, ge=SCORE_MIN, le=SCORE_MAX)
    status: ParseStatus | None = Field(
        default=None, description="parse status from the critic (bench run only)"
    )
    expected_score: float | None = None
    confidence: float | None = Field(
        default=None, ge=0.0, le=1.0, description="the critic's probability of its score (bench run only)"
    )
    raw_text: str | None = None
    reasoning: str | None = None
    task: Task | None = None
    axis: BenchAxis | None = None
    critic: str | None = Field(default=None, description="which critic produced it (bench run only)")

    _plain_score = field_validator("score", mode="before")(_plain_int_score)

    @model_validator(mode="after")
    def _status(self) -> Prediction:
        if self.status is not None and self.status != "ok" and self.score is not None:
            raise ValueError(f"prediction {self.id}: status {self.status!r} must have score null")
        if self.status == "ok" and self.score is None:
            raise ValueError(f"prediction {self.id}: status 'ok' needs a score")
        return self

    @property
    def parse_failure(self) -> bool:
        return self.score is None
