"""Output contracts of `firmctl`, run as a user runs it (a subprocess, stdout piped into `jq`/`json.load`).

Commands that print JSON print only JSON on stdout; warnings and progress go to stderr. The expensive JSON
commands are checked where their fixtures live: `critic train` in tests/sft/test_train.py, `rl train` in
tests/rl/test_distributed_cli.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _firmctl(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "firm.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _only_json(res: subprocess.CompletedProcess) -> object:
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1, res.stdout  # one document, one line
    return json.loads(res.stdout)


@pytest.mark.parametrize(
    ("args", "stdin", "key"),
    [
        (["reward", "cme", "--execution", "5", "--consistency", "1"], None, "reward"),
        (["reward", "qma", "--instruction", "4", "--quality", "5,4,3"], None, "reward"),
        (["critic", "parse", "--format", "edit"], '{"reasoning": "done", "score": [4]}', "status"),
        (["recipes", "ls", "--json"], None, None),
    ],
    ids=["reward-cme", "reward-qma", "critic-parse", "recipes-ls-json"],
)
def test_json_commands_print_only_json(args: list[str], stdin: str | None, key: str | None) -> None:
    out = _only_json(_firmctl(*args, stdin=stdin))
    assert key is None or key in out  # type: ignore[operator]


def test_bench_make_synthetic_and_score_print_only_json(tmp_path: Path) -> None:
    made = _only_json(_firmctl("bench", "make-synthetic", "--out", str(tmp_path / "bench"), "--n", "2"))
    assert made == {"bench": str(tmp_path / "bench"), "items": 4}
    humans = [json.loads(x) for x in (tmp_path / "bench" / "human.jsonl").read_text().splitlines()]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": h["id"], "score": 3}) + "\n" for h in humans))
    report = _only_json(
        _firmctl(
            "bench",
            "score",
            "--predictions",
            str(tmp_path / "p.jsonl"),
            "--human",
            str(tmp_path / "bench" / "human.jsonl"),
            "--bootstrap",
            "10",
        )
    )
    assert "edit" in report  # type: ignore[operator]


def test_library_output_inside_a_command_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever a library prints to stdout while a command runs (DeepSpeed's logger, a stray print) lands on
    stderr; only the command's result reaches stdout."""
    import typer

    from firm.cli._common import cli_errors, echo_json

    app = typer.Typer()

    @app.command()
    @cli_errors
    def noisy() -> None:
        print("[WARNING] some library chatter")
        sys.stdout.write("more chatter\n")
        echo_json({"ok": True})

    with pytest.raises(SystemExit) as exc:
        app([], standalone_mode=True)
    assert exc.value.code == 0
    out, err = capsys.readouterr()
    assert out == '{"ok": true}\n'
    assert "some library chatter" in err and "more chatter" in err
