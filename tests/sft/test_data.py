"""Synthetic known-answer items and the critic SFT dataset format (writer, reader, bad rows, object stores)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from firm.curation.dataset import CriticSFTRow, read_sft_dataset, write_sft_dataset
from firm.curation.synthetic import RED, synthetic_edit_items, synthetic_gen_items
from firm.curation.synthetic_sft import synthetic_sft_rows, write_synthetic_sft_dataset
from firm.errors import InputError
from firm.rewards.parsing import parse_answer


def _red_cells(img) -> int:
    """Count the 2×2 grid cells whose centre pixel is the synthetic red."""
    w, h = img.size
    centres = [(w // 4, h // 4), (3 * w // 4, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4)]
    return sum(img.getpixel(c) == RED for c in centres)


def _shape_pixels(img) -> list[tuple[int, int, int]]:
    """The colour at each cell's distractor position (top-right corner of the cell)."""
    w = img.size[0]
    c = w // 2
    r = max(2, c // 10)
    return [img.getpixel((x0 + c - r - 1, y0 + r + 1)) for x0, y0 in [(0, 0), (c, 0), (0, c), (c, c)]]


def test_edit_scores_are_readable_from_the_pixels() -> None:
    items = synthetic_edit_items(60, seed=3)
    assert {i.execution for i in items} == {1, 2, 3, 4, 5}
    assert {i.consistency for i in items} == {1, 2, 3, 4, 5}
    for it in items:
        assert _red_cells(it.source) == 0
        assert _red_cells(it.edited) == it.drawn
        assert it.instruction.startswith(f"Add {it.requested} red")
        assert it.execution == 1 + round(4 * it.drawn / it.requested)
        changed = sum(a != b for a, b in zip(_shape_pixels(it.source), _shape_pixels(it.edited), strict=True))
        assert changed == it.changed and it.consistency == 5 - changed
        for axis in ("execution", "consistency"):
            parsed = parse_answer("edit", it.target(axis))
            assert parsed.ok and parsed.score == it.score(axis)


def test_gen_scores_and_targets() -> None:
    items = synthetic_gen_items(40, seed=1, size=96)
    assert {i.difficulty for i in items} == {"easy", "hard"}
    for it in items:
        assert it.image.size == (96, 96)
        assert _red_cells(it.image) == it.drawn
        assert it.instruction == 5 - abs(it.drawn - it.requested)
        parsed = parse_answer("gen", it.target())
        assert parsed.ok and parsed.score == it.instruction


def test_synthetic_items_are_deterministic_and_seeded() -> None:
    a, b, c = (
        synthetic_edit_items(8, seed=5),
        synthetic_edit_items(8, seed=5),
        synthetic_edit_items(8, seed=6),
    )
    assert [x.edited.tobytes() for x in a] == [x.edited.tobytes() for x in b]
    assert [x.edited.tobytes() for x in a] != [x.edited.tobytes() for x in c]
    assert all(x.requested == 4 for x in synthetic_edit_items(10, requested=4))
    with pytest.raises(InputError, match="requested"):
        synthetic_edit_items(2, requested=5)


def test_round_trip_splits_and_rows(tmp_path: Path) -> None:
    out = write_synthetic_sft_dataset(
        tmp_path / "ds",
        n_edit=20,
        n_gen=10,
        axes=["execution", "consistency", "instruction"],
        val_fraction=0.1,
    )
    ds = read_sft_dataset(out)
    assert ds.counts() == {"train": 18 * 2 + 9, "val": 2 * 2 + 1, "skipped": 0}
    val_ids = {r.id for r in ds.split("val")}
    assert not val_ids & {r.id for r in ds.split("train")}
    edit = next(r for r in ds.rows if r.task == "edit")
    assert len(edit.images) == 2 and (ds.root / edit.images[1]).is_file()
    assert parse_answer("edit", edit.target).score == edit.score


def _bad_dataset(tmp_path: Path, base: Path) -> Path:
    """A copy of `base` with five bad rows added to a second train shard (line numbers 1..5)."""
    ds = Path(shutil.copytree(base, tmp_path / "bad"))
    info = json.loads((ds / "dataset.json").read_text())
    good = json.loads((ds / info["shards"][0]).read_text().splitlines()[0])
    (ds / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = [
        {**good, "id": "missing-image", "images": [good["images"][0], "images/nope.png"]},
        {**good, "id": "corrupt-image", "images": [good["images"][0], "images/corrupt.png"]},
        {k: v for k, v in {**good, "id": "no-target"}.items() if k != "target"},
        {**good, "id": "unparseable", "target": "I think it is fine."},
        {**good, "id": "wrong-score", "target": '{"reasoning": "x", "score": [5]}', "score": 1},
    ]
    (ds / "shards" / "train-bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info["shards"].append("shards/train-bad.jsonl")
    (ds / "dataset.json").write_text(json.dumps(info))
    return ds


def test_bad_rows_are_rejected_with_shard_and_line_or_skipped_with_a_count(tmp_path: Path) -> None:
    base = write_synthetic_sft_dataset(tmp_path / "ds", n_edit=6, axes=["execution"], val_fraction=0.2)
    bad = _bad_dataset(tmp_path, Path(base))
    with pytest.raises(InputError, match=r"shards/train-bad\.jsonl:1: image 'images/nope\.png' not found"):
        read_sft_dataset(bad)
    ds = read_sft_dataset(bad, on_bad_row="skip")
    assert len(ds.rows) == 6 and ds.counts()["skipped"] == 5
    reasons = {b.line: b.reason for b in ds.skipped}
    assert "corrupt" in reasons[2]
    assert "target" in reasons[3] and "Field required" in reasons[3]
    assert "does not parse" in reasons[4]
    assert "states score 5" in reasons[5] and "score is 1" in reasons[5]
    assert all(b.shard == "shards/train-bad.jsonl" for b in ds.skipped)


def test_row_schema_errors_name_the_problem() -> None:
    good = next(iter(synthetic_sft_rows(n_edit=1, axes=["execution"], val_fraction=0)))[0]
    with pytest.raises(ValueError, match="does not belong to task"):
        CriticSFTRow.model_validate({**good.model_dump(), "axis": "quality"})
    with pytest.raises(ValueError, match="needs 2 image"):
        CriticSFTRow.model_validate({**good.model_dump(), "images": ["a.png"]})
    with pytest.raises(ValueError, match="non-empty instruction"):
        CriticSFTRow.model_validate({**good.model_dump(), "instruction": " "})
    with pytest.raises(ValueError, match="Extra inputs"):
        CriticSFTRow.model_validate({**good.model_dump(), "extra": 1})


def test_publish_to_s3_and_read_back(s3_env: dict[str, str], tmp_path: Path) -> None:
    from firm.storage import open_store

    bucket = s3_env["bucket"]
    store, _ = open_store(f"s3://{bucket}/x")
    store.ensure_bucket()  # type: ignore[attr-defined]
    uri = f"s3://{bucket}/datasets/synthetic"
    rows = synthetic_sft_rows(n_edit=5, n_gen=3, axes=["execution", "instruction"], val_fraction=0.2)
    assert write_sft_dataset("s3-test", rows, uri) == uri
    assert store.exists("datasets/synthetic/MANIFEST.json")
    ds = read_sft_dataset(uri)
    assert ds.counts() == {"train": 4 + 2, "val": 1 + 1, "skipped": 0}
    assert all((ds.root / ref).is_file() for r in ds.rows for ref in r.images)
