"""Every rubric renders for both roles, carries its scale and answer format, and rejects empty inputs."""

from __future__ import annotations

import pytest

from firm.errors import InputError
from firm.rewards.parsing import parse_answer
from firm.rewards.rubrics import RUBRICS, get_rubric, rubric_by_id
from firm.schemas import AXES_BY_TASK

FIELDS = {
    "instruction": "Replace the red umbrella with a blue one",
    "prompt": "Three cats on a green sofa, watercolour, no dogs",
    "difference_report": "- umbrella colour: red -> blue\n- a lamp disappeared on the left",
    "plan": "1. three cats\n2. green sofa\n3. watercolour style\n4. no dogs",
}
PAIRS = [(task, axis) for task, axes in AXES_BY_TASK.items() for axis in axes]


def test_every_task_axis_role_exists() -> None:
    assert len(RUBRICS) == len(PAIRS) * 2
    for task, axis in PAIRS:
        for role in ("student", "teacher"):
            r = get_rubric(task, axis, role)
            assert rubric_by_id(r.id) is r
            assert r.n_images == (2 if task == "edit" else 1)


@pytest.mark.parametrize(("task", "axis"), PAIRS)
@pytest.mark.parametrize("role", ["student", "teacher"])
def test_renders(task: str, axis: str, role: str) -> None:
    r = get_rubric(task, axis, role)
    text = r.render(**FIELDS)
    assert "{{" not in text and "{instruction}" not in text and "{context}" not in text
    assert all(f"{k} -" in text for k in "12345") or axis == "quality"
    if task == "edit":
        assert FIELDS["instruction"] in text
        assert ("lamp disappeared" in text) == (role == "teacher")
    elif axis == "instruction":
        assert FIELDS["prompt"] in text
        assert ("1. three cats" in text) == (role == "teacher")
        assert "Final Alignment Rating" in text and "\\boxed{" in text
    else:
        assert "aesthetics" in text and "technical" in text and "structure" in text
    # a critic that merely echoes the rubric must not be credited with a score
    assert parse_answer(r.answer_format, text).status == "unparseable"


@pytest.mark.parametrize(
    ("task", "axis", "missing"),
    [
        ("edit", "execution", "instruction"),
        ("edit", "consistency", "instruction"),
        ("gen", "instruction", "prompt"),
    ],
)
@pytest.mark.parametrize("role", ["student", "teacher"])
@pytest.mark.parametrize("empty", ["", "   ", None])
def test_rejects_empty_required_fields(
    task: str, axis: str, missing: str, role: str, empty: str | None
) -> None:
    fields = {**FIELDS, missing: empty}
    with pytest.raises(InputError, match=f"needs a non-empty {missing}"):
        get_rubric(task, axis, role).render(**fields)  # type: ignore[arg-type]


def test_quality_needs_no_text() -> None:
    for role in ("student", "teacher"):
        assert get_rubric("gen", "quality", role).render() == get_rubric("gen", "quality", "student").render()


@pytest.mark.parametrize(
    ("task", "axis", "extra"),
    [
        ("edit", "execution", "difference_report"),
        ("edit", "consistency", "difference_report"),
        ("gen", "instruction", "plan"),
    ],
)
def test_teacher_needs_its_context(task: str, axis: str, extra: str) -> None:
    fields = {k: v for k, v in FIELDS.items() if k != extra}
    with pytest.raises(InputError, match=f"needs a non-empty {extra}"):
        get_rubric(task, axis, "teacher").render(**fields)
    assert get_rubric(task, axis, "student").render(**fields)  # students never see it


def test_unknown_rubric_lists_known() -> None:
    with pytest.raises(
        InputError, match=r"unknown rubric 'edit\.style\.student\.v1'; known: edit\.consistency"
    ):
        get_rubric("edit", "style")
    with pytest.raises(InputError, match="malformed rubric id"):
        rubric_by_id("edit.execution")
