"""Bench layout, publishing, and the importer for the public FIRM-Bench release (on the fixture in fixtures/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from firm.bench.loaders import import_firm_release, load_bench, publish_bench, read_records
from firm.bench.records import BenchItem
from firm.bench.synthetic import make_synthetic_bench
from firm.errors import InputError

RELEASE = Path(__file__).parent / "fixtures" / "firm_release"


def test_import_firm_release_maps_fields(tmp_path: Path) -> None:
    bench = import_firm_release(RELEASE, tmp_path / "bench")
    by_id = {it.id: it for it in bench.items}
    # edit: one item per scored axis; e3 is scored on both axes
    assert set(by_id) == {"e1:execution", "e2:consistency", "e3:execution", "e3:consistency", "g1", "g2"}
    e1 = by_id["e1:execution"]
    assert (e1.task, e1.axis, e1.human_score, e1.difficulty) == ("edit", "execution", 4, None)
    assert e1.instruction == "Make the sky orange."
    assert e1.images == [
        "images/edit/gedit_bench/src_1.png",
        "images/edit/edited_images_step1x_en_2gpu/edit_1.png",
    ]
    assert by_id["e2:consistency"].human_score == 2
    assert (by_id["e3:execution"].human_score, by_id["e3:consistency"].human_score) == (5, 3)
    # gen: instruction_following.score[0]; en/ = easy, en_long/ = hard
    g1, g2 = by_id["g1"], by_id["g2"]
    assert (g1.axis, g1.difficulty, g1.human_score, g1.prompt) == (
        "instruction",
        "easy",
        3,
        "A red cube on a table.",
    )
    assert (g2.difficulty, g2.human_score) == ("hard", 5)
    # images were copied and open as RGB; the written layout reloads identically
    reloaded = load_bench(tmp_path / "bench")
    assert [it.model_dump() for it in reloaded.items] == [it.model_dump() for it in bench.items]
    src, edited = reloaded.open_images(e1)
    assert (
        src.size == (8, 8)
        and src.getpixel((0, 0)) == (200, 0, 0)
        and edited.getpixel((0, 0)) == (55, 255, 255)
    )
    human_rows = [json.loads(x) for x in (tmp_path / "bench" / "human.jsonl").read_text().splitlines()]
    assert {r["id"]: r["human_score"] for r in human_rows}["g2"] == 5


def test_importer_errors_name_file_and_line(tmp_path: Path) -> None:
    rel = tmp_path / "rel"
    shutil.copytree(RELEASE, rel)
    human = rel / "FIRM-Bench-Gen" / "result" / "human_bench_v1.jsonl"
    rows = human.read_text().splitlines()
    rows[1] = rows[1].replace('"score": [5]', '"score": [7]')
    human.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"human_bench_v1.jsonl:2: human score 7 outside 1\.\.5"):
        import_firm_release(rel, tmp_path / "out")
    human.write_text(rows[0] + "\n")  # g2 now has inputs but no human score
    with pytest.raises(InputError, match=r"without human score \['g2'\]"):
        import_firm_release(rel, tmp_path / "out")
    with pytest.raises(InputError, match="not a FIRM-Bench release"):
        import_firm_release(tmp_path / "nothing", tmp_path / "out")


def test_synthetic_bench_has_known_answers(tmp_path: Path) -> None:
    from firm.curation.synthetic import synthetic_edit_items, synthetic_gen_items

    bench = make_synthetic_bench(tmp_path / "syn", 4, seed=3, size=32)
    assert len(bench.items) == 8
    edit = [it for it in bench.items if it.task == "edit"]
    assert [it.axis for it in edit] == ["execution", "consistency", "execution", "consistency"]
    truth = synthetic_edit_items(4, seed=3, size=32)
    assert [it.human_score for it in edit] == [
        t.score(a) for t, a in zip(truth, [it.axis for it in edit], strict=True)
    ]
    gen = [it for it in bench.items if it.task == "gen"]
    assert [it.human_score for it in gen] == [t.instruction for t in synthetic_gen_items(4, seed=3, size=32)]
    assert {it.difficulty for it in gen} == {"easy", "hard"}
    assert load_bench(tmp_path / "syn").open_images(edit[0])[1].size == (32, 32)


def test_publish_and_load_from_uri(tmp_path: Path) -> None:
    make_synthetic_bench(tmp_path / "syn", 2, size=32)
    uri = (tmp_path / "store" / "benches" / "syn-v1").as_uri()
    publish_bench(tmp_path / "syn", uri)
    bench = load_bench(uri)
    assert len(bench.items) == 4
    assert bench.root != (tmp_path / "syn").resolve()  # a verified copy, not the source directory
    assert bench.open_images(bench.items[0])[0].size == (32, 32)


def test_bad_bench_rows(tmp_path: Path) -> None:
    p = tmp_path / "bench.jsonl"
    good = {
        "id": "a",
        "task": "gen",
        "axis": "instruction",
        "difficulty": "easy",
        "images": ["x.png"],
        "prompt": "p",
        "human_score": 3,
    }
    p.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(InputError, match=r"bench.jsonl:2: malformed JSON"):
        read_records(p, BenchItem)
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "human_score": 0}) + "\n")
    with pytest.raises(InputError, match=r"bench.jsonl:2: human_score"):
        read_records(p, BenchItem)
    p.write_text(json.dumps({**good, "task": "edit", "axis": "execution", "difficulty": None}) + "\n")
    with pytest.raises(InputError, match="needs 2 images"):
        read_records(p, BenchItem)
    p.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(InputError, match="duplicate id 'a'"):
        read_records(p, BenchItem)
    with pytest.raises(InputError, match=r"no bench\.jsonl"):
        load_bench(tmp_path / "empty")


def test_cli_import_firm_and_publish(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from firm.cli.main import app

    uri = (tmp_path / "store" / "firm-bench-v1").as_uri()
    res = CliRunner().invoke(
        app,
        ["bench", "import-firm", "--release", str(RELEASE), "--out", str(tmp_path / "b"), "--publish", uri],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"bench": str(tmp_path / "b"), "items": 6, "published": uri}
    assert (tmp_path / "store" / "firm-bench-v1" / "MANIFEST.json").exists()
    assert {it.id for it in load_bench(uri).items} >= {"g1", "e3:consistency"}
