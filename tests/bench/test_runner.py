"""`bench run`: batching, resume, torn-line repair, report files — with the random baseline and the tiny critic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firm.bench.backends import RandomBackend, make_backend
from firm.bench.loaders import Bench, load_bench
from firm.bench.records import BenchItem
from firm.bench.runner import PREDICTIONS_FILE, load_predictions, run_bench
from firm.bench.synthetic import make_synthetic_bench
from firm.cli.main import app
from firm.errors import ConfigError, InputError
from firm.schemas import Judgement

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def syn_bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    return make_synthetic_bench(tmp_path_factory.mktemp("syn") / "bench", 6, seed=1, size=56)


class CountingBackend(RandomBackend):
    def __init__(self) -> None:
        super().__init__(seed=5)
        self.calls: list[int] = []

    def judge(self, items, bench):  # type: ignore[no-untyped-def]
        self.calls.append(len(items))
        return super().judge(items, bench)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_batches_resumes_and_reports(syn_bench: Bench, tmp_path: Path) -> None:
    out = tmp_path / "run"
    b = CountingBackend()
    r1 = run_bench(b, syn_bench, out, limit=5, batch_size=2, progress=False)
    assert (r1.judged, r1.skipped) == (5, 0) and b.calls == [2, 2, 1]
    preds = _lines(out / PREDICTIONS_FILE)
    assert [p["id"] for p in preds] == [it.id for it in syn_bench.items[:5]]
    assert all(p["status"] == "ok" and 1 <= p["score"] <= 5 and p["raw_text"] for p in preds)

    b2 = CountingBackend()
    r2 = run_bench(b2, syn_bench, out, limit=5, batch_size=2, progress=False)
    assert (r2.judged, r2.skipped) == (0, 5) and b2.calls == []  # nothing new on rerun
    assert _lines(out / PREDICTIONS_FILE) == preds  # and nothing rewritten

    r3 = run_bench(b2, syn_bench, out, batch_size=4, progress=False)  # widen: only the rest is judged
    assert (r3.judged, r3.skipped) == (len(syn_bench.items) - 5, 5) and b2.calls == [4, 3]
    assert len(_lines(out / PREDICTIONS_FILE)) == len(syn_bench.items)
    # resuming into a directory another critic wrote is refused: one report never mixes two critics
    before = (out / PREDICTIONS_FILE).read_bytes()
    with pytest.raises(
        InputError, match=r"by critic random\(seed=5\), this run's critic is random\(seed=9\)"
    ):
        run_bench(RandomBackend(9), syn_bench, out, progress=False)
    assert (out / PREDICTIONS_FILE).read_bytes() == before

    # the report agrees with `bench score` on the written files
    doc = json.loads((out / "report.json").read_text())
    res = CliRunner().invoke(
        app,
        ["bench", "score", "--predictions", str(out / PREDICTIONS_FILE), "--human", str(out / "human.jsonl")],
    )
    assert res.exit_code == 0, res.output
    scored = json.loads(res.stdout)
    for task in ("edit", "gen"):
        for g, m in scored[task].items():
            assert doc[task][g]["mae"] == pytest.approx(m["mae"])


def test_report_files_are_well_formed(syn_bench: Bench, tmp_path: Path) -> None:
    result = run_bench(RandomBackend(3), syn_bench, tmp_path / "r", progress=False, n_boot=200)
    out = tmp_path / "r"
    doc = json.loads((out / "report.json").read_text())
    assert doc["meta"]["critic"] == "random(seed=3)" and doc["edit"]["overall"]["n"] == 6
    for png in ("confusion.png", "histograms.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    md = (out / "report.md").read_text()
    assert "| FIRM-Edit-8B (paper) | 0.53 | 0.73 | 0.62 |" in md
    assert "| Qwen3-VL-8B zero-shot (paper) | 0.63 | 0.63 | 0.63 |" in md
    mine = f"{result.report.edit['execution'].mae:.2f}"
    assert f"| **random(seed=3)** | {mine} |" in md
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<table>") == 3
    assert "<td>Gemini-3-Pro (paper)</td><td>0.54</td><td>0.57</td><td>0.55</td>" in html
    assert html.count('src="data:image/png;base64,iVBORw0KGgo') == 2  # both plots inlined, nothing external
    assert "http://" not in html and "https://" not in html


def test_torn_last_line_is_rejudged_and_bad_lines_named(syn_bench: Bench, tmp_path: Path) -> None:
    out = tmp_path / "torn"
    run_bench(RandomBackend(1), syn_bench, out, limit=3, progress=False)
    path = out / PREDICTIONS_FILE
    full = path.read_bytes()
    path.write_bytes(full[: full.rfind(b"\n", 0, len(full) - 1) + 1] + b'{"id": "syn-gen')  # crash mid-line
    assert len(load_predictions(path)) == 2
    r = run_bench(RandomBackend(1), syn_bench, out, limit=3, progress=False)
    assert (r.judged, r.skipped) == (1, 2)
    assert path.read_bytes() == full  # same deterministic answers, file whole again
    path.write_text(path.read_text().replace('"score":', '"score": 9, "x":', 1))
    with pytest.raises(InputError, match=rf"{PREDICTIONS_FILE}:1: "):
        run_bench(RandomBackend(1), syn_bench, out, limit=3, progress=False)


def test_parse_failures_are_recorded_not_zero(syn_bench: Bench, tmp_path: Path) -> None:
    class Refuser(RandomBackend):
        def judge(self, items, bench):  # type: ignore[no-untyped-def]
            return [
                Judgement(
                    task=it.task,
                    axis=it.axis,
                    status="unparseable",
                    raw_text="I cannot judge.",
                    sample_id=it.id,
                )
                for it in items
            ]

    r = run_bench(Refuser(), syn_bench, tmp_path / "ref", progress=False, n_boot=50)
    preds = _lines(tmp_path / "ref" / PREDICTIONS_FILE)
    assert all(p.get("score") is None and p["status"] == "unparseable" for p in preds)
    assert r.report.edit["overall"].parse_failures == 6
    worst = [
        abs((1 if it.human_score >= 3 else 5) - it.human_score) for it in syn_bench.items if it.task == "edit"
    ]
    assert r.report.edit["overall"].mae == pytest.approx(sum(worst) / len(worst), abs=1e-6)


def test_make_backend_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_backend("random://7"), RandomBackend)
    monkeypatch.setenv("FIRM_OPENAI_MODEL", "m")
    b = make_backend("openai://127.0.0.1:9/x")
    assert b.base_url == "http://127.0.0.1:9/x/v1"  # type: ignore[attr-defined]
    assert make_backend("https://api.example.com/v1").base_url == "https://api.example.com/v1"  # type: ignore[attr-defined]
    monkeypatch.delenv("FIRM_OPENAI_MODEL")
    with pytest.raises(ConfigError, match="model"):
        make_backend("http://127.0.0.1:9")
    with pytest.raises(InputError, match="integer seed"):
        make_backend("random://x")


def test_cli_make_synthetic_and_run_resume(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "make-synthetic", "--out", str(tmp_path / "b"), "--n", "3"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["items"] == 6
    args = [
        "bench",
        "run",
        "--critic",
        "random://2",
        "--bench",
        str(tmp_path / "b"),
        "--out",
        str(tmp_path / "o"),
    ]
    res = runner.invoke(app, [*args, "--limit", "4"])
    assert res.exit_code == 0, res.output
    assert "done: bench, judged 4 item(s) (skipped 0 already scored) in " in res.stderr
    assert json.loads(res.stdout)["edit"]["overall"]["n"] == 3
    res = runner.invoke(app, [*args, "--limit", "4", "--resume"])
    assert "judged 0 item(s) (skipped 4 already scored)" in res.stderr
    res = runner.invoke(app, [*args, "--limit", "0", "--resume"])
    assert res.exit_code == 1 and "--limit" in res.stderr
    res = runner.invoke(
        app, ["bench", "run", "--critic", "random://1", "--bench", str(tmp_path / "nob"), "--out", "x"]
    )
    assert res.exit_code == 1 and "no bench.jsonl" in res.stderr


# ------------------------------------------------------------------------------------------------ tiny critic
def test_bench_run_end_to_end_with_tiny_critic(
    tiny_critic_dir: Path, syn_bench: Bench, tmp_path: Path
) -> None:
    out = tmp_path / "critic_run"
    args = [
        "bench",
        "run",
        "--critic",
        str(tiny_critic_dir),
        "--bench",
        str(syn_bench.root),
        "--out",
        str(out),
    ]
    args += ["--max-new-tokens", "12"]
    res = CliRunner().invoke(app, [*args, "--limit", "4", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    preds = _lines(out / PREDICTIONS_FILE)
    assert [p["id"] for p in preds] == [it.id for it in syn_bench.items[:4]]
    for p in preds:  # a random-init critic: whatever it says is recorded verbatim with its parse status
        assert p["critic"] == str(tiny_critic_dir) and "raw_text" in p
        assert (p["status"] == "ok") == (p.get("score") is not None)
    doc = json.loads(res.stdout)
    assert doc["edit"]["overall"]["n"] == 4 and doc["gen"]["overall"] is None
    assert sum(doc["edit"]["overall"]["confusion"][h][k] for h in range(5) for k in range(5)) == 4
    res = CliRunner().invoke(app, [*args, "--limit", "4", "--resume"])
    assert res.exit_code == 0 and "judged 0 item(s) (skipped 4 already scored)" in res.stderr
    assert (out / "report.html").exists() and (out / "confusion.png").read_bytes()[:8] == PNG_MAGIC


def test_local_backend_matches_critic_directly(tiny_critic_dir: Path, syn_bench: Bench) -> None:
    from firm.bench.backends import LocalCriticBackend
    from firm.critic import Critic, CriticRequest

    critic = Critic.from_pretrained(tiny_critic_dir, max_new_tokens=12)
    backend = LocalCriticBackend(str(tiny_critic_dir), critic=critic, batch_size=3)
    items: list[BenchItem] = [syn_bench.items[0], syn_bench.items[-1]]
    got = backend.judge(items, syn_bench)
    reqs = [
        CriticRequest(
            task=it.task,
            axis=it.axis,
            images=[str(syn_bench.image_path(r)) for r in it.images],
            instruction=it.instruction,
            prompt=it.prompt,
            sample_id=it.id,
        )
        for it in items
    ]
    want = critic.judge(reqs)
    assert [j.raw_text for j in got] == [j.raw_text for j in want]
    assert [j.sample_id for j in got] == [it.id for it in items]
    assert load_bench(syn_bench.root).items == syn_bench.items
