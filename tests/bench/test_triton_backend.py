"""TritonBackend against a real tritonserver serving the format-taught tiny critic (loopback only): on the
success path (every answer parses) its judgements equal the in-process critic's item by item (same rubric pack,
pixels, greedy decode), and the report names the pack the server was exported with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firm.bench.backends import LocalCriticBackend, TritonBackend
from firm.bench.loaders import Bench
from firm.bench.synthetic import make_synthetic_bench
from firm.cli.main import app
from firm.rewards.packs import load_pack

MAX_PIXELS = 56 * 56


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    b = make_synthetic_bench(tmp_path_factory.mktemp("tb") / "bench", 2, seed=4, size=56)
    edit0 = b.items[0]  # also judge the same edit on its other axis: one service call must serve both
    twin = edit0.model_copy(update={"id": edit0.id.split(":")[0] + ":consistency", "axis": "consistency"})
    return Bench(root=b.root, items=[edit0, twin, b.items[2]])  # + one gen item


@pytest.fixture(scope="module")
def triton(formatted_critic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository
    from firm.serving.server import TritonServer

    cfg = ExportConfig(
        critic=str(formatted_critic_dir),
        task="all",
        gen_quality=False,
        max_pixels=MAX_PIXELS,
        batching=BatchingConfig(max_batch_size=8, preferred_batch_sizes=[4, 8], max_queue_delay_us=2000),
    )
    repo = export_repository(cfg, tmp_path_factory.mktemp("triton") / "repo")
    with TritonServer(repo) as srv:
        yield srv.grpc_url


def test_triton_backend_matches_in_process_critic(
    triton: str, formatted_critic_dir: Path, bench: Bench
) -> None:
    from firm.critic import Critic

    backend = TritonBackend(triton)
    try:
        got = backend.judge(bench.items, bench)
    finally:
        backend.close()
    assert backend.samples_scored == len(bench.items) - 1  # the twin edit shared its call
    critic = Critic.from_pretrained(formatted_critic_dir, max_pixels=MAX_PIXELS)
    want = LocalCriticBackend("local", critic=critic).judge(bench.items, bench)
    assert [(j.sample_id, j.axis) for j in got] == [(it.id, it.axis) for it in bench.items]
    assert [j.status for j in got] == ["ok"] * len(got)  # the success path
    assert [(j.score, j.reasoning) for j in got] == [(j.score, j.reasoning) for j in want]
    assert backend.rubrics == load_pack().ref == LocalCriticBackend("local", critic=critic).rubrics
    for j in got:
        assert json.loads(j.raw_text)["task"] == j.task  # the service's breakdown is kept for audit


def test_cli_run_with_triton_uri(triton: str, bench: Bench, tmp_path: Path) -> None:
    args = [
        "bench",
        "run",
        "--critic",
        f"triton://{triton}",
        "--bench",
        str(bench.root),
        "--out",
        str(tmp_path / "o"),
    ]
    res = CliRunner().invoke(app, [*args, "--limit", "3"])
    assert res.exit_code == 0, res.output
    preds = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(p["critic"] == f"triton://{triton}" for p in preds)
    doc = json.loads(res.stdout)  # the bench on disk (no twin): 2 edits + 1 gen
    assert doc["edit"]["overall"]["n"] == 2 and doc["gen"]["overall"]["n"] == 1
    assert doc["meta"]["rubrics"] == load_pack().ref and doc["meta"]["parse_failures_by_status"] == {}
    assert f"Rubric pack: `{load_pack().ref}`" in (tmp_path / "o" / "report.md").read_text()
    res = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "o2"), "--rubrics", "firm-v1"])
    assert res.exit_code == 1 and "--rubrics cannot be used with a triton:// critic" in res.stderr
