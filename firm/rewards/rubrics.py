"""Versioned rubric prompts for FIRM critics (our own wording of the paper's scales).

A rubric is selected by (task, axis, role):
- task `edit`, axes `execution` and `consistency`: two images (source first, edited second) + the instruction;
  answer `{"reasoning": "...", "score": [k]}`.
- task `gen`, axis `instruction`: one image + the prompt; answer ends with `Final Alignment Rating: k` and `\\boxed{k}`.
- task `gen`, axis `quality`: one image; answer `{"score": [aesthetics, technical, structure], "reasoning": "..."}`.

Role `student` is what a trained critic sees (and what SFT trains on); role `teacher` is the curation variant that
additionally receives a *difference report* (edits, "difference-first") or a *checklist plan* (generation,
"plan-then-score"). Quality has no teacher context, so its teacher and student prompts coincide.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from firm.errors import InputError

RUBRIC_VERSION = "v1"
Role = Literal["student", "teacher"]
AnswerFormat = Literal["edit", "gen", "quality"]

_EDIT_ANSWER = (
    "Answer with a JSON object and nothing else:\n"
    '{{"reasoning": "<one or two sentences>", "score": [<integer 1-5>]}}'
)

_EXECUTION = """You are judging an image edit. The first image is the SOURCE, the second image is the EDITED result.
Editing instruction: "{instruction}"
{context}
Judge EXECUTION only: how completely and correctly the requested changes were carried out. Ignore anything the
instruction did not ask for; unrequested changes are judged elsewhere.

Scale:
5 - every requested change is present and correct.
4 - all key aspects are done, with one very subtle miss.
3 - the main intent is done, but one or more significant requested elements are missing or wrong.
2 - the result barely follows the instruction.
1 - nothing requested was done, or the opposite was done.

""" + _EDIT_ANSWER

_CONSISTENCY = """You are judging an image edit. The first image is the SOURCE, the second image is the EDITED result.
Editing instruction: "{instruction}"
{context}
Judge CONSISTENCY only: whether anything changed that the instruction did not ask for. Do not judge whether the
requested edit succeeded.

Do NOT count as unintended changes: regions revealed or hidden because of the edit, small global changes of
brightness, colour or noise, attributes of an entity the instruction explicitly replaces, and direct physical
consequences of the edit (shadows, reflections, contact).

Scale:
5 - only the requested changes were made.
4 - one significant and/or one or two minor unintended changes.
3 - two or three significant and/or three or four minor unintended changes.
2 - four or more significant and/or five or more minor unintended changes.
1 - the edited image is almost entirely different from the source.

""" + _EDIT_ANSWER

_INSTRUCTION = """You are judging how faithfully a generated image follows its text prompt.
Prompt: "{prompt}"
{context}
First list the requirements the prompt states (subjects, counts, attributes, colours, spatial relations, text,
style, and anything it says must NOT appear). Analyse each requirement against the image, then give a final analysis.

Scale:
5 - every requirement is met, including negative constraints.
4 - the main content is right; one or two non-critical details are off.
3 - the main subject(s) are present, but several requirements are missing or wrong.
2 - most main subjects are missing or wrong.
1 - the image is unrelated to the prompt.

End your answer with the line "Final Alignment Rating: <integer 1-5>" followed by \\boxed{{<integer 1-5>}}."""

_QUALITY = """You are judging the visual quality of an image, independent of any prompt.
Give three integer scores from 1 (very poor) to 5 (excellent):
1. aesthetics - composition, colour harmony, visual appeal;
2. technical quality - noise, blur, compression artefacts, banding;
3. structure and texture - plausible geometry, anatomy, physics, lighting and surface detail.

Answer with a JSON object and nothing else:
{{"score": [<aesthetics>, <technical>, <structure>], "reasoning": "<one or two sentences>"}}"""

_DIFF_CONTEXT = (
    "\nA careful comparison of the two images found these differences (use them as evidence):\n"
    "{difference_report}\n"
)
_PLAN_CONTEXT = "\nChecklist of the prompt's requirements to verify (use it as your plan):\n{plan}\n"


class Rubric(BaseModel):
    """One versioned rubric prompt."""

    model_config = ConfigDict(frozen=True)

    task: Literal["edit", "gen"]
    axis: Literal["execution", "consistency", "instruction", "quality"]
    role: Role
    version: str
    n_images: int
    answer_format: AnswerFormat
    template: str
    context_template: str = ""

    @property
    def id(self) -> str:
        return f"{self.task}.{self.axis}.{self.role}.{self.version}"

    def render(
        self,
        *,
        instruction: str | None = None,
        prompt: str | None = None,
        difference_report: str | None = None,
        plan: str | None = None,
    ) -> str:
        """Fill the template. Raises `InputError` when a required field is missing or empty."""
        fields: dict[str, str] = {}
        if self.task == "edit":
            fields["instruction"] = _required(instruction, "instruction", self.id)
        elif self.axis == "instruction":
            fields["prompt"] = _required(prompt, "prompt", self.id)
        context = ""
        if self.role == "teacher" and self.context_template:
            if self.task == "edit":
                context = self.context_template.format(
                    difference_report=_required(difference_report, "difference_report", self.id)
                )
            else:
                context = self.context_template.format(plan=_required(plan, "plan", self.id))
        return self.template.format(context=context, **fields)


def _required(value: str | None, name: str, rubric_id: str) -> str:
    if value is None or not str(value).strip():
        raise InputError(f"rubric {rubric_id} needs a non-empty {name}")
    return str(value).strip()


def _build() -> dict[str, Rubric]:
    specs = [
        ("edit", "execution", 2, "edit", _EXECUTION, _DIFF_CONTEXT),
        ("edit", "consistency", 2, "edit", _CONSISTENCY, _DIFF_CONTEXT),
        ("gen", "instruction", 1, "gen", _INSTRUCTION, _PLAN_CONTEXT),
        ("gen", "quality", 1, "quality", _QUALITY, ""),
    ]
    out: dict[str, Rubric] = {}
    for task, axis, n_images, fmt, template, ctx in specs:
        for role in ("student", "teacher"):
            r = Rubric(
                task=task, axis=axis, role=role, version=RUBRIC_VERSION, n_images=n_images,
                answer_format=fmt, template=template, context_template=ctx,
            )
            out[r.id] = r
    return out


RUBRICS: dict[str, Rubric] = _build()


def get_rubric(task: str, axis: str, role: str = "student", version: str = RUBRIC_VERSION) -> Rubric:
    """Look up a rubric; unknown task/axis/role/version raises `InputError` listing what exists."""
    key = f"{task}.{axis}.{role}.{version}"
    try:
        return RUBRICS[key]
    except KeyError:
        known = ", ".join(sorted(RUBRICS))
        raise InputError(f"unknown rubric {key!r}; known: {known}") from None


def rubric_by_id(rubric_id: str) -> Rubric:
    """Look up a rubric by its id, e.g. 'edit.execution.student.v1'."""
    parts = rubric_id.split(".")
    if len(parts) != 4:
        raise InputError(f"malformed rubric id {rubric_id!r}; expected task.axis.role.version")
    return get_rubric(*parts)
