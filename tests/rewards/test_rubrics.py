"""Rubric packs: firm-v1 renders for both roles with its scales and answer formats; packs load by name, path and
URI, hash their content, lay out messages as they say, and bad packs fail with one line naming pack and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from firm import rubric_store
from firm.critic.messages import build_messages, message_images
from firm.errors import ConfigError, InputError, StorageError
from firm.rewards.packs import (
    dump_pack,
    get_rubric,
    load_pack,
    pack_mismatch,
    rubric_by_id,
    save_pack,
    write_provenance,
)
from firm.rewards.parsing import parse_answer
from firm.schemas import AXES_BY_TASK

FIELDS = {
    "instruction": "Replace the red umbrella with a blue one",
    "prompt": "Three cats on a green sofa, watercolour, no dogs",
    "difference_report": "- umbrella colour: red -> blue\n- a lamp disappeared on the left",
    "plan": "1. three cats\n2. green sofa\n3. watercolour style\n4. no dogs",
}
PAIRS = [(task, axis) for task, axes in AXES_BY_TASK.items() for axis in axes]


def test_firm_v1_has_every_task_axis_role() -> None:
    pack = load_pack()
    assert pack.name == "firm-v1" and load_pack("firm-v1") is pack
    assert len(pack.rubrics) == len(PAIRS) * 2
    for task, axis in PAIRS:
        for role in ("student", "teacher"):
            r = get_rubric(task, axis, role)
            assert r.id == f"{task}.{axis}.{role}.firm-v1"
            assert rubric_by_id(r.id) == r
            assert rubric_by_id(f"{task}.{axis}.{role}.v1") == r  # ids written before packs existed
            assert r.n_images == (2 if task == "edit" else 1)
    assert (
        pack.get("gen", "instruction").generation.max_new_tokens
        > pack.get("edit", "execution").generation.max_new_tokens
    )


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


def test_unknown_rubric_and_pack_list_what_exists() -> None:
    with pytest.raises(
        InputError, match=r"rubric pack firm-v1: no rubric 'edit\.style\.student'; it has: edit\.execution"
    ):
        get_rubric("edit", "style")
    with pytest.raises(InputError, match="malformed rubric id"):
        rubric_by_id("edit")
    with pytest.raises(InputError, match=r"names pack 'other'"):
        rubric_by_id("edit.execution.student.other")
    with pytest.raises(InputError, match=r"rubric pack 'no-such-pack' not found \(known packs: firm-v1"):
        load_pack("no-such-pack")


# ----------------------------------------------------------------------------------------------- pack files


def _data() -> dict:
    return yaml.safe_load(dump_pack(load_pack()))


def _write(tmp_path: Path, data: dict, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_round_trip_hash_and_uri(tmp_path: Path, firm_home: Path) -> None:
    pack = load_pack()
    copy = load_pack(_write(tmp_path, _data()))
    assert copy == pack and copy.sha256 == pack.sha256 and len(pack.sha256) == 64
    changed = _data()
    changed["rubrics"][0]["generation"]["max_new_tokens"] = 999
    assert load_pack(_write(tmp_path, changed, "q.yaml")).sha256 != pack.sha256
    # by name from $FIRM_HOME/rubrics, and through the object store
    mine = pack.model_copy(update={"name": "mine"})
    where = save_pack(mine)
    assert Path(where) == firm_home / "rubrics" / "mine.yaml"
    assert load_pack("mine").rubrics[0].id.endswith(".mine")
    uri = rubric_store.save_pack(mine, (tmp_path / "store").as_uri())
    assert uri.endswith("/mine.yaml") and rubric_store.load_pack(uri).sha256 == load_pack("mine").sha256
    assert rubric_store.load_pack("mine") == load_pack("mine")  # names and paths: firm.rewards.packs
    with pytest.raises(StorageError, match="no such object"):
        rubric_store.load_pack((tmp_path / "store" / "none.yaml").as_uri())
    with pytest.raises(InputError, match="object store"):  # firm.rewards never reads the store itself
        load_pack(uri)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["rubrics"][0].update(template=d["rubrics"][0]["template"] + " {colour}"),
            r"rubric pack firm-v1 \(.*\): rubrics\.edit\.execution\.student\.template: unknown placeholder\(s\) \['colour'\]",
        ),
        (
            lambda d: d["rubrics"][0].update(template="Judge the edit.", placeholders=[]),
            r"rubrics\.edit\.execution\.student\.template: renders without \{instruction\}",
        ),
        (
            lambda d: d["rubrics"][0].update(placeholders=["instruction", "prompt"]),
            r"rubrics\.edit\.execution\.student\.placeholders: lists \['instruction', 'prompt'\]",
        ),
        (
            lambda d: d.update(rubrics=[r for r in d["rubrics"] if r["axis"] != "quality"]),
            r"rubrics: missing gen\.quality\.student",
        ),
        (
            lambda d: d["rubrics"][2]["generation"].update(temperature=0.7),
            r"rubrics\.edit\.consistency\.student\.generation\.temperature: must be 0",
        ),
        (lambda d: d["rubrics"][4].update(n_images=2), r"rubrics\.gen\.instruction\.student\.n_images"),
        (
            lambda d: d["rubrics"][0].update(template=d["rubrics"][0]["template"] + " {instruction.upper}"),
            r"template: placeholder \{instruction\.upper\} is not a plain name",
        ),
    ],
)
def test_bad_pack_is_one_line_naming_pack_and_field(tmp_path: Path, edit, message: str) -> None:
    data = _data()
    edit(data)
    with pytest.raises(ConfigError, match=message) as info:
        load_pack(_write(tmp_path, data))
    assert "\n" not in str(info.value)


def test_layout_system_turn_image_order_and_codec(tmp_path: Path) -> None:
    from PIL import Image

    data = _data()
    r = data["rubrics"][0]
    r["layout"] = {"images": "after_text", "image_order": ["edited", "source"]}
    r["system"] = "You judge edits like: {instruction}"
    r["placeholders"] = ["instruction"]
    r["images"] = {"codec": "jpeg", "jpeg_quality": 30}
    rubric = load_pack(_write(tmp_path, data)).get("edit", "execution")
    src, edited = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    msgs = build_messages(rubric, [src, edited], instruction="Make it blue.")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"][0]["text"] == "You judge edits like: Make it blue."
    assert [p["type"] for p in msgs[1]["content"]] == ["text", "image", "image"]
    assert message_images(msgs) == [edited, src]

    from firm.critic.messages import encode_images

    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    (jpeg,) = encode_images(rubric, [noisy])
    assert jpeg.size == noisy.size and jpeg.tobytes() != noisy.tobytes()  # lossy at quality 30
    assert encode_images(load_pack().get("edit", "execution"), [noisy])[0] is noisy


def test_pack_mismatch_warnings(tmp_path: Path) -> None:
    pack = load_pack()
    other = pack.model_copy(update={"name": "other", "version": "2"})
    critic = tmp_path / "critic"
    critic.mkdir()
    assert pack_mismatch(str(critic), critic, pack) is None  # no provenance, not a released critic
    write_provenance(critic, other)
    msg = pack_mismatch(str(critic), critic, pack)
    assert msg and f"trained with rubric pack other@{other.sha256[:12]}" in msg and "--rubrics other" in msg
    assert pack_mismatch(str(critic), critic, other) is None
    released = pack_mismatch("VisionXLab/FIRM-Edit-8B", None, pack)
    assert released and "released VisionXLab/FIRM-Edit-8B" in released and "import-official" in released
    official = pack.model_copy(update={"trained_critics": ("VisionXLab/FIRM-Edit-8B",)})
    assert pack_mismatch("/models/FIRM-Edit-8B", None, official) is None
