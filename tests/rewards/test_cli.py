"""`firmctl reward cme|qma` and `firmctl critic parse`: the public JSON contract and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from firm.cli.main import app

runner = CliRunner()


def run(args: list[str], stdin: str | None = None) -> tuple[int, dict | None, str]:
    res = runner.invoke(app, args, input=stdin)
    out = json.loads(res.stdout) if res.exit_code == 0 else None
    return res.exit_code, out, res.stderr


def test_reward_cme_contract() -> None:
    rc, out, _ = run(["reward", "cme", "--execution", "5", "--consistency", "1"])
    assert rc == 0
    assert out == {"reward": 0.6, "execution": 1.0, "consistency": 0.0, "formulation": "cme"}
    rc, out, _ = run(["reward", "cme", "--execution", "1", "--consistency", "5"])
    assert out == {"reward": 0.0, "execution": 0.0, "consistency": 1.0, "formulation": "cme"}


@pytest.mark.parametrize(
    ("args", "reward"),
    [
        (["--formulation", "sum", "--w-base", "0.5", "--w-bonus", "0.5"], 0.5 * 0.25 + 0.5 * 1.0),
        (["--formulation", "sum"], 0.6 * 0.25 + 0.4 * 1.0),
        (["--formulation", "guard"], 0.6 * 0.25),
        (["--formulation", "guard", "--guard-threshold", "1"], 0.6 * 0.25 + 0.4),
        (["--w-base", "0.8", "--w-bonus", "0.2"], 0.25),
    ],
)
def test_reward_cme_ablations(args: list[str], reward: float) -> None:
    rc, out, err = run(["reward", "cme", "--execution", "2", "--consistency", "5", *args])
    assert rc == 0, err
    assert out is not None and out["reward"] == pytest.approx(reward)
    assert out["formulation"] == (args[1] if args[0] == "--formulation" else "cme")


def test_reward_qma_contract() -> None:
    rc, out, _ = run(["reward", "qma", "--instruction", "5", "--quality", "4,3,5"])
    assert rc == 0
    assert out == {"reward": 0.7, "instruction": 1.0, "quality": 0.5, "formulation": "qma"}
    rc, out, _ = run(
        ["reward", "qma", "--instruction", "3", "--quality", " 5, 5 ,1", "--w-base", "1", "--w-bonus", "0"]
    )
    assert out == {"reward": 0.5, "instruction": 0.5, "quality": 0.0, "formulation": "qma"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reward", "cme", "--execution", "0", "--consistency", "3"], "--execution must be in 1..5"),
        (["reward", "cme", "--execution", "3", "--consistency", "6"], "--consistency must be in 1..5"),
        (
            ["reward", "cme", "--execution", "3", "--consistency", "3", "--formulation", "product"],
            "unknown --formulation 'product'",
        ),
        (
            ["reward", "cme", "--execution", "3", "--consistency", "3", "--w-base", "0.9"],
            "w_base + w_bonus must be 1",
        ),
        (["reward", "qma", "--instruction", "4", "--quality", "4,3"], "--quality must be three"),
        (["reward", "qma", "--instruction", "4", "--quality", "a,b,c"], "--quality must be three"),
        (["reward", "qma", "--instruction", "4", "--quality", "4,3,9"], r"--quality[2] must be in 1..5"),
        (["reward", "qma", "--instruction", "6", "--quality", "4,3,5"], "--instruction must be in 1..5"),
    ],
)
def test_reward_bad_inputs_one_error_line(args: list[str], message: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        ("edit", '```json\n{"reasoning": "hat added", "score": [4]}\n```', {"status": "ok", "score": 4}),
        ("gen", "Analysis.\nFinal Alignment Rating: 3\n\\boxed{3}\n", {"status": "ok", "score": 3}),
        ("gen", "\\boxed{3} or \\boxed{5}", {"status": "unparseable", "score": None}),
        ("quality", '{"score": [4, 3, 5], "reasoning": "ok"}', {"status": "ok", "score": [4, 3, 5]}),
        ("edit", '{"reasoning": "x", "score": [6]}', {"status": "out_of_range", "score": None}),
        ("edit", "", {"status": "unparseable", "score": None}),
        ("gen", "評価：\\boxed{５}", {"status": "ok", "score": 5}),
    ],
)
def test_critic_parse(fmt: str, text: str, expected: dict) -> None:
    rc, out, err = run(["critic", "parse", "--format", fmt], stdin=text)
    assert rc == 0, err
    assert out == expected


def test_critic_parse_full_and_bad_format() -> None:
    text = '{"reasoning": "hat added", "score": [4]}'
    rc, out, _ = run(["critic", "parse", "--format", "edit", "--full"], stdin=text)
    assert rc == 0 and out is not None
    assert out["parsed_from"] == "json" and out["reasoning"] == "hat added"
    ((a, b),) = out["score_spans"]
    assert text[a:b] == "4"
    res = runner.invoke(app, ["critic", "parse", "--format", "video"], input="{}")
    assert res.exit_code != 0
    assert res.stderr.strip() == "error: unknown --format 'video'; expected one of edit, gen, quality"
