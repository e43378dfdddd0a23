"""`firmctl critic parse`: turn a critic's answer (stdin) into a score, the way rewards read it."""

from __future__ import annotations

import sys

import typer

from firm.cli._common import cli_errors, echo_json
from firm.cli.critic_cmd import app
from firm.errors import InputError


@app.command("parse")
@cli_errors
def parse_cmd(
    fmt: str = typer.Option(..., "--format", help="answer format: edit | gen | quality"),
    full: bool = typer.Option(
        False, "--full", help="also print the rule, reasoning, digit spans and failure detail"
    ),
) -> None:
    """Read a critic's text on stdin and print {"status": ..., "score": ...} (score: int, list of 3, or null)."""
    from firm.rewards.parsing import ANSWER_FORMATS, parse_answer

    if fmt not in ANSWER_FORMATS:
        raise InputError(f"unknown --format {fmt!r}; expected one of {', '.join(ANSWER_FORMATS)}")
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"stdin is not UTF-8 text: {exc}") from None
    result = parse_answer(fmt, text)  # type: ignore[arg-type]
    if full:
        echo_json(result)
    else:
        echo_json({"status": result.status, "score": result.score})
