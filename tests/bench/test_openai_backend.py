"""OpenAICompatibleBackend over real HTTP against a chat-completions server that runs the tiny critic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firm.bench.backends import LocalCriticBackend, OpenAICompatibleBackend
from firm.bench.loaders import Bench
from firm.bench.synthetic import make_synthetic_bench
from firm.cli.main import app
from firm.errors import FirmError
from tests.bench.openai_server import ChatServer, serve

KEY = "test-key-not-a-secret"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def critic(tiny_critic_dir: Path):  # type: ignore[no-untyped-def]
    from firm.critic import Critic

    return Critic.from_pretrained(tiny_critic_dir, max_new_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def server(critic) -> Iterator[tuple[ChatServer, str]]:  # type: ignore[no-untyped-def]
    with serve(critic, api_key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    return make_synthetic_bench(tmp_path_factory.mktemp("oa") / "bench", 3, seed=2, size=56)


def _backend(url: str, **kw) -> OpenAICompatibleBackend:  # type: ignore[no-untyped-def]
    return OpenAICompatibleBackend(
        url, "firm-tiny-critic", api_key=KEY, max_tokens=MAX_TOKENS, backoff_s=0.01, **kw
    )


def test_wire_path_matches_in_process_critic(server, critic, bench: Bench) -> None:  # type: ignore[no-untyped-def]
    chat, url = server
    chat.reset()
    items = [bench.items[0], bench.items[1], bench.items[3]]  # execution, consistency and gen rubrics
    over_http = _backend(url, concurrency=2).judge(items, bench)
    local = LocalCriticBackend("tiny", critic=critic).judge(items, bench)
    assert [j.raw_text for j in over_http] == [
        j.raw_text for j in local
    ]  # same prompt, images, greedy decode
    assert [(j.status, j.score) for j in over_http] == [(j.status, j.score) for j in local]
    assert [j.sample_id for j in over_http] == [it.id for it in items]
    assert [(j.task, j.axis) for j in over_http] == [(it.task, it.axis) for it in items]
    assert chat.requests == 3 and 1 <= chat.max_in_flight <= 2  # concurrency limit held


def test_retries_with_backoff_then_succeeds(server, bench: Bench) -> None:  # type: ignore[no-untyped-def]
    chat, url = server
    chat.reset(fail_first=2)
    b = _backend(url, concurrency=1, max_retries=3)
    out = b.judge(bench.items[:2], bench)
    assert len(out) == 2 and b.requests_sent == 4 and chat.requests == 4
    chat.reset(fail_first=10)
    with pytest.raises(FirmError, match=r"gave up after 2 attempts \(HTTP 503"):
        _backend(url, concurrency=1, max_retries=1).judge(bench.items[:1], bench)
    chat.reset()


def test_auth_and_model_errors_are_not_retried(server, bench: Bench) -> None:  # type: ignore[no-untyped-def]
    chat, url = server
    chat.reset()
    bad = OpenAICompatibleBackend(url, "firm-tiny-critic", api_key="wrong", backoff_s=0.01)
    with pytest.raises(FirmError, match="HTTP 401"):
        bad.judge(bench.items[:1], bench)
    assert chat.requests == 1 and "wrong" not in repr(bad)
    with pytest.raises(FirmError, match="HTTP 404"):
        OpenAICompatibleBackend(url, "other-model", api_key=KEY).judge(bench.items[:1], bench)


def test_unreachable_endpoint_is_a_clear_error(bench: Bench) -> None:
    b = OpenAICompatibleBackend("http://127.0.0.1:9", "m", max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(FirmError, match=r"gave up after 2 attempts .*Connect"):
        b.judge(bench.items[:1], bench)


def test_cli_run_against_endpoint_with_env_config(server, bench: Bench, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    chat, url = server
    chat.reset()
    monkeypatch.setenv("FIRM_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("FIRM_OPENAI_MODEL", "firm-tiny-critic")
    critic_uri = url.replace("http://", "openai://")
    args = ["bench", "run", "--critic", critic_uri, "--bench", str(bench.root), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, [*args, "--limit", "3", "--max-new-tokens", str(MAX_TOKENS)])
    assert res.exit_code == 0, res.output
    preds = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and chat.requests == 3
    assert all(p["critic"] == f"firm-tiny-critic @ {url}/v1" for p in preds)
    assert KEY not in (tmp_path / "o" / "report.json").read_text() + res.output
