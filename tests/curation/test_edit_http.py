"""Difference-first editing curation end to end against a real local chat-completions server (scripted teacher):
stage outputs, drop accounting, rewriting, balancing, dedupe, split determinism, cache hits, leak cleaning."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from firm.curation.dataset import read_sft_dataset
from firm.curation.edit import EditCurationConfig, curate_edit
from firm.curation.selection import split_of
from firm.curation.teachers import make_teacher
from firm.rewards.parsing import parse_answer
from tests.bench.openai_server import serve
from tests.curation.helpers import LEAK, REWRITTEN, EditScript, edit_key, write_edit_manifest

MODEL = "scripted-teacher"


def _teacher(url: str, **kw):  # type: ignore[no-untyped-def]
    return make_teacher(url, model=MODEL, backoff_s=0.01, **kw)


@pytest.fixture
def edits(tmp_path: Path):  # type: ignore[no-untyped-def]
    manifest, scores, items = write_edit_manifest(tmp_path / "in", 16)
    # bad input: a missing image, an empty instruction, a bad line, an exact duplicate, an unreadable image
    (tmp_path / "in" / "img" / "broken.png").write_bytes(b"not a png")
    extra = [
        {"id": "missing", "source": "img/nope.png", "edited": f"img/{items[0].id}-e.png", "instruction": "x"},
        {"id": "empty", "source": f"img/{items[0].id}-s.png", "edited": f"img/{items[0].id}-e.png",
         "instruction": "  "},
        {"id": "dup", "source": f"img/{items[1].id}-s.png", "edited": f"img/{items[1].id}-e.png",
         "instruction": f"{items[1].instruction.upper()}  ({items[1].id.upper()})!"},
        {"id": "broken", "source": "img/broken.png", "edited": f"img/{items[0].id}-e.png", "instruction": "x"},
    ]  # fmt: skip
    with manifest.open("a") as fh:
        fh.write("{not json\n")
        fh.write("".join(json.dumps(x) + "\n" for x in extra))
    url_of = {it.id: edit_key(it) for it in items}
    behaviour = {url_of[items[2].id]: "garbage", url_of[items[3].id]: "leak", url_of[items[4].id]: "long"}
    return manifest, scores, items, behaviour, url_of


def test_edit_curation_end_to_end(edits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest, scores, items, behaviour, _url_of = edits
    script = EditScript(scores, behaviour)
    cfg = EditCurationConfig(input=str(manifest), out=str(tmp_path / "ds"), val_fraction=0.25, rewrite_ratio=0.25,
                             in_flight=5, cache=(tmp_path / "cache").as_uri(), work_dir=str(tmp_path / "w1"))  # fmt: skip
    with serve(None, model_name=MODEL, script=script, latency_s=0.0) as (chat, url):
        res = curate_edit(cfg, _teacher(url, concurrency=4))
        first_calls = chat.requests
    st = res.stats
    assert st["items"]["read"] == 21
    assert st["items"]["dropped"] == {"bad_json": 1, "duplicate": 1, "empty_instruction": 1,
                                      "missing_image": 1, "unreadable_image": 1}  # fmt: skip
    # 16 usable items: 16 reports + rewrites + 32 scoring calls
    n_rw = st["notes"]["rewritten"]
    assert 1 <= n_rw <= 10 and first_calls == 16 + n_rw + 32 == st["teacher"]["calls"]
    assert st["samples"]["dropped"]["execution"] == {"truncated": 1, "unparseable": 1}
    assert st["samples"]["dropped"]["consistency"] == {"truncated": 1, "unparseable": 1}
    assert st["leaks"] == {"policy": "clean", "cleaned": 1, "dropped": 0, "kept": 0}
    assert st["teacher"]["prompt_tokens"] > 0 and st["teacher"]["completion_tokens"] > 0
    assert st["prompts"]["name"] == "firm-curation-v1" and st["rubrics"].startswith("firm-v1@")

    ds = read_sft_dataset(res.uri, on_bad_row="reject")
    root = Path(res.uri.removeprefix("file://"))
    assert (root / "stats.json").is_file() and (root / "MANIFEST.json").is_file()
    assert (root / "histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by = {(r.id, r.axis): r for r in ds.rows}
    assert len(by) == 28 and Counter(r.axis for r in ds.rows) == {"execution": 14, "consistency": 14}
    bad = {items[2].id, items[3].id, items[4].id}
    for it in items:
        rw = (f"{it.id}~rw", "execution") in by
        sid = f"{it.id}~rw" if rw else it.id
        if it.id in (items[2].id, items[4].id):
            assert (sid, "execution") not in by
            continue
        ex, co = by[(sid, "execution")], by[(sid, "consistency")]
        assert ex.split == co.split == split_of(it.id, 0.25)  # deterministic split by item id
        assert co.score == it.consistency
        if rw:
            assert ex.instruction == REWRITTEN and ex.score == 1
        else:
            assert ex.instruction == f"{it.instruction} ({it.id})" and ex.score == it.execution
        assert "report" not in ex.target.lower()  # privileged information never reaches the student
        assert parse_answer("edit", ex.target).score == ex.score
    leaked = next(r for r in ds.rows if r.id.startswith(items[3].id) and r.axis == "execution")
    assert LEAK not in leaked.target and json.loads(leaked.target)["reasoning"].startswith("The execution")
    assert bad  # used above
    assert {r.split for r in ds.rows} == {"train", "val"}

    # a rerun with a fresh journal: every teacher call is answered from the cache, the dataset is identical
    out2 = tmp_path / "ds2"
    with serve(None, model_name=MODEL, script=script, latency_s=0.0) as (chat, url):
        res2 = curate_edit(cfg.model_copy(update={"out": str(out2), "work_dir": str(tmp_path / "w2")}),
                           _teacher(url))  # fmt: skip
        assert chat.requests == 0
    assert res2.stats["teacher"]["cache_hits"] == res2.stats["teacher"]["calls"] == first_calls
    for shard in ds.info.shards:
        assert (out2 / shard).read_text() == (root / shard).read_text()
    # resuming the first run: done items are skipped (no cache lookups, no calls); its published dataset is only
    # replaced when asked to (overwrite)
    with serve(None, model_name=MODEL, script=script, latency_s=0.0) as (chat, url):
        res3 = curate_edit(cfg.model_copy(update={"overwrite": True}), _teacher(url))
        assert chat.requests == 0
    assert res3.stats["resumed_items"] == 21 and res3.stats["teacher"]["this_run"]
    shutil.rmtree(out2)


def test_balancing_to_a_target(edits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest, scores, _items, _, _ = edits
    cfg = EditCurationConfig(input=str(manifest), out=str(tmp_path / "ds"), val_fraction=0.0, cache="off",
                             balance={"consistency": "1:1,2:1,3:1,4:1,5:1"}, axes=("consistency",))  # fmt: skip
    with serve(None, model_name=MODEL, script=EditScript(scores), latency_s=0.0) as (_, url):
        res = curate_edit(cfg, _teacher(url, concurrency=8))
    before = res.stats["scores_before_balance"]["consistency"]
    after = res.stats["scores"]["consistency"]
    least = min(before.values())
    assert all(v == least for v in after.values())
    assert res.stats["samples"]["balanced_out"]["consistency"] == sum(before.values()) - 5 * least


def test_teacher_failures_are_counted_and_the_run_continues(edits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest, scores, items, _, url_of = edits
    behaviour = {url_of[items[5].id]: "http500", url_of[items[6].id]: "slow"}
    script = EditScript(scores, behaviour)
    script.slow_s = 1.5
    cfg = EditCurationConfig(input=str(manifest), out=str(tmp_path / "ds"), cache="off", limit=8)
    with serve(None, model_name=MODEL, script=script, latency_s=0.0) as (chat, url):
        chat.reset(fail_first=3, fail_status=429)  # rate limited at first: retried with backoff
        res = curate_edit(cfg, _teacher(url, concurrency=2, max_retries=3, timeout_s=0.5))
    assert res.stats["items"]["dropped"] == {"teacher_http_5xx": 1, "teacher_timeout": 1}
    ds = read_sft_dataset(res.uri)
    assert len({r.id for r in ds.rows}) == 6


def test_unreachable_teacher_fails_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from firm.cli.main import app

    manifest, _, _ = write_edit_manifest(tmp_path, 1)
    res = CliRunner().invoke(app, ["data", "curate-edit", "--input", str(manifest), "--out", str(tmp_path / "o"),
                                   "--teacher", "http://127.0.0.1:9", "--model", "m"])  # fmt: skip
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith(
        "error: teacher endpoint http://127.0.0.1:9/v1 is unreachable"
    )
    assert not (tmp_path / "o").exists()


def test_a_fatal_teacher_error_stops_the_run_and_publishes_nothing(edits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from firm.llm.openai_client import ChatCallError

    manifest, scores, _items, _, _ = edits
    cfg = EditCurationConfig(input=str(manifest), out=str(tmp_path / "ds"), cache="off", limit=6)
    server = serve(None, model_name=MODEL, script=EditScript(scores), latency_s=0.0, api_key="right")
    with server as (_, url), pytest.raises(ChatCallError, match="HTTP 401") as err:
        curate_edit(cfg, make_teacher(url, model=MODEL, api_key="wrong", concurrency=4))
    assert err.value.fatal and not (tmp_path / "ds").exists()


def test_the_teachers_own_confidence_flags_or_drops_its_unsure_labels(edits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Scoring asks for logprobs; labels the teacher wrote with p < min_confidence are flagged (kept, counted,
    listed) or dropped; an endpoint that refuses logprobs still curates, with no confidence (never 0)."""
    manifest, scores, items, _, url_of = edits
    unsure = [items[5], items[6]]
    script = EditScript(scores, {url_of[it.id]: "unsure" for it in unsure})
    cfg = EditCurationConfig(input=str(manifest), out=str(tmp_path / "ds"), val_fraction=0.0, limit=10,
                             cache=(tmp_path / "cache").as_uri(), work_dir=str(tmp_path / "w1"))  # fmt: skip
    with serve(None, model_name=MODEL, script=script, latency_s=0.0) as (chat, url):
        res = curate_edit(cfg, _teacher(url, concurrency=4))
        assert chat.logprob_requests == 20  # both axes of 10 items; the difference reports asked for none
    tc = res.stats["teacher_confidence"]
    assert tc["policy"] == "flag" and tc["min_confidence"] == 0.5
    assert tc["with_confidence"] == 20 and tc["without_confidence"] == 0
    assert tc["below"] == tc["flagged"] == 4 and tc["dropped"] == 0
    listed = sorted(f"{it.id}/{a}" for it in unsure for a in ("execution", "consistency"))
    assert sorted(tc["flagged_ids"]) == listed
    assert tc["mean"] == pytest.approx((16 * 0.9 + 4 * 0.3) / 20, abs=1e-4)
    assert len(read_sft_dataset(res.uri).rows) == 20  # flagged labels are kept
    from firm.curation.stats import stats_table

    assert "teacher confidence: 20 labels with one" in stats_table(res.stats) and "4 flagged" in stats_table(
        res.stats
    )

    # drop: the same answers (from the cache, logprobs included) and the unsure labels are gone, counted
    drop = cfg.model_copy(update={"out": str(tmp_path / "ds2"), "work_dir": str(tmp_path / "w2"),
                                  "low_confidence": "drop"})  # fmt: skip
    with serve(None, model_name=MODEL, script=script, latency_s=0.0) as (chat, url):
        res2 = curate_edit(drop, _teacher(url))
        assert chat.requests == 0
    tc2 = res2.stats["teacher_confidence"]
    assert tc2["below"] == tc2["dropped"] == 4 and tc2["flagged"] == 0 and tc2["flagged_ids"] == []
    assert res2.stats["samples"]["dropped"]["execution"] == {"low_confidence": 2}
    kept = {it.id for it in items[:10]} - {it.id for it in unsure}
    assert {r.id for r in read_sft_dataset(res2.uri).rows} == kept
    # a stricter threshold flags every label under it
    strict = cfg.model_copy(update={"out": str(tmp_path / "ds3"), "work_dir": str(tmp_path / "w3"),
                                    "min_confidence": 0.95})  # fmt: skip
    with serve(None, model_name=MODEL, script=script, latency_s=0.0) as (_, url):
        assert curate_edit(strict, _teacher(url)).stats["teacher_confidence"]["flagged"] == 20

    # an endpoint without logprobs (HTTP 400 to them): asked again without, every label kept, none has a confidence
    plain = cfg.model_copy(update={"out": str(tmp_path / "ds4"), "work_dir": str(tmp_path / "w4"),
                                   "cache": "off", "low_confidence": "drop"})  # fmt: skip
    with serve(None, model_name=MODEL, script=script, latency_s=0.0) as (chat, url):
        chat.refuse_logprobs = True
        res4 = curate_edit(plain, _teacher(url, concurrency=4))
        assert chat.logprob_requests == 0
    tc4 = res4.stats["teacher_confidence"]
    assert tc4["with_confidence"] == 0 and tc4["without_confidence"] == 20 and tc4["mean"] is None
    assert tc4["below"] == tc4["dropped"] == 0 and len(read_sft_dataset(res4.uri).rows) == 20
