"""Plan-then-score generation curation through the CLI, `data stats`, the release importers, a tiny local teacher,
and that a curated dataset trains with `firmctl critic train`."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from firm.cli.main import app
from firm.curation.dataset import read_sft_dataset
from tests.bench.openai_server import serve
from tests.curation.helpers import GEN_LEAK, GenScript, write_edit_manifest, write_gen_manifest
from tests.sft.helpers import sft_config, write_config

MODEL = "scripted-teacher"
REPO = Path(__file__).resolve().parents[2]


def test_curate_gen_cli_and_stats(tmp_path: Path) -> None:
    manifest, scores, items = write_gen_manifest(tmp_path / "in", 8)
    from firm.llm.openai_client import image_data_url

    leak = {image_data_url(items[0].image)}
    unsure = {image_data_url(items[1].image)}  # scored with a low probability of its own digit: flagged
    with serve(None, model_name=MODEL, script=GenScript(scores, leak, unsure), latency_s=0.0) as (chat, url):
        res = CliRunner().invoke(app, ["data", "curate-gen", "--input", str(manifest), "--out", str(tmp_path / "ds"),
                                       "--planner", url, "--scorer", url, "--planner-model", MODEL, "--scorer-model",
                                       MODEL, "--val-fraction", "0.3", "--cache", "off"])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert chat.requests == 16  # one plan and one score per item
    out = json.loads(res.stdout)
    ds = read_sft_dataset(out["uri"])
    by_id = {r.id: r for r in ds.rows}
    assert {i.id: i.instruction for i in items} == {k: r.score for k, r in by_id.items()}
    assert all("checklist" not in r.target.lower() and "plan" not in r.target.lower() for r in ds.rows)
    assert GEN_LEAK not in by_id[items[0].id].target and out["stats"]["leaks"]["cleaned"] == 1
    assert by_id[items[0].id].prompt == f"{items[0].prompt} ({items[0].id})"
    tc = out["stats"]["teacher_confidence"]
    assert tc["with_confidence"] == 8 and tc["flagged_ids"] == [f"{items[1].id}/instruction"]
    summary = "teacher unsure (confidence < 0.5) of 1 label(s): 1 flagged, 0 dropped (0 without a confidence)"
    assert summary in res.stderr, res.stderr
    table = CliRunner().invoke(app, ["data", "stats", out["uri"], "--png", str(tmp_path / "h.png")])
    assert table.exit_code == 0 and table.stdout.splitlines()[2].startswith("instruction")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def _png(img) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_importers_map_the_release_layout(tmp_path: Path) -> None:
    from firm.curation.importers import import_firm_edit, import_firm_gen
    from firm.curation.synthetic import synthetic_edit_items, synthetic_gen_items

    ed = synthetic_edit_items(3, size=32)
    (tmp_path / "rel").mkdir()
    rows = [
        # a Hugging Face Image cell with bytes, the answer as a chat turn
        {"id": "a", "source_image": {"bytes": base64.b64encode(_png(ed[0].source)).decode(), "path": None},
         "edited_image": {"bytes": base64.b64encode(_png(ed[0].edited)).decode(), "path": None},
         "instruction": "add a square", "messages": [{"role": "user", "content": "..."},
                                                     {"role": "assistant", "content": '{"reasoning": "ok", "score": [4]}'}]},
        # images as paths relative to the file, the answer as a column
        {"id": "b", "images": ["b-s.png", "b-e.png"], "instruction": "add two", "response": "```json\n"
         '{"reasoning": "half", "score": [3]}\n```'},
        {"id": "c", "images": ["b-s.png", "b-e.png"], "instruction": "add", "response": "no score here"},
        {"id": "d", "images": ["nope.png", "b-e.png"], "instruction": "add", "response": '{"score": [2]}'},
    ]  # fmt: skip
    ed[1].source.save(tmp_path / "rel" / "b-s.png")
    ed[1].edited.save(tmp_path / "rel" / "b-e.png")
    src = tmp_path / "rel" / "FIRM-Edit-Consistency.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{torn\n")
    uri, stats = import_firm_edit(src, str(tmp_path / "edit-ds"), val_fraction=0.0)
    ds = read_sft_dataset(uri)
    assert [(r.id, r.axis, r.score, r.instruction) for r in ds.rows] == [
        ("a", "consistency", 4, "add a square"), ("b", "consistency", 3, "add two")]  # fmt: skip
    assert stats["items"] == {
        "read": 5,
        "dropped": {"answer_unparseable": 1, "bad_json": 1, "missing_image": 1},
    }

    gi = synthetic_gen_items(1, size=32)[0]
    gi.image.save(tmp_path / "rel" / "g.png")
    grow = {
        "prompt": gi.prompt,
        "image": "g.png",
        "response": "Checked.\nFinal Alignment Rating: 5\n\\boxed{5}",
    }
    (tmp_path / "rel" / "gen.jsonl").write_text(json.dumps(grow) + "\n")
    uri, stats = import_firm_gen(tmp_path / "rel" / "gen.jsonl", str(tmp_path / "gen-ds"))
    (row,) = read_sft_dataset(uri).rows
    assert (row.task, row.axis, row.score, row.prompt) == ("gen", "instruction", 5, gi.prompt)


def test_local_teacher_curates_and_the_dataset_trains(formatted_critic_dir: Path, tmp_path: Path) -> None:
    """A tiny local VLM as the teacher end to end (its answers parse but mean nothing), then the scripted-teacher
    dataset is trained on for a few steps with `firmctl critic train`."""
    import torch

    from firm.critic import Critic
    from firm.curation.edit import EditCurationConfig, curate_edit
    from firm.curation.teachers import LocalTeacher

    torch.set_num_threads(1)
    manifest, _, _ = write_edit_manifest(tmp_path / "in", 6)
    teacher = LocalTeacher(Critic.from_pretrained(formatted_critic_dir, max_new_tokens=48), batch_size=8)
    cfg = EditCurationConfig(input=str(manifest), out=str(tmp_path / "ds"), cache="off", val_fraction=0.2)
    res = curate_edit(cfg, teacher)
    st = res.stats
    assert st["teacher"]["calls"] == 6 * 3 and st["items"]["dropped"] == {}
    scored = sum(st["samples"]["scored"].values())
    dropped = sum(sum(d.values()) for d in st["samples"]["dropped"].values())
    assert scored + dropped == 12 and scored >= 1  # every (item, axis) accounted for
    ds = read_sft_dataset(res.uri)
    assert len(ds.rows) == scored and ds.info.rows.get("train", 0) >= 1

    cfg_train = sft_config(formatted_critic_dir, res.uri, tmp_path, max_steps=2, eval__every_n_steps=0,
                           batch__per_device=2)  # fmt: skip
    config = write_config(cfg_train, tmp_path / "run.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "FIRM_PROGRESS_INTERVAL": "0"}
    proc = subprocess.run([str(Path(sys.executable).parent / "firmctl"), "critic", "train", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["steps"] == 2
