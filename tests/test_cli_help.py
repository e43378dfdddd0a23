"""Every `firmctl ... --help` renders (help texts go through Rich markup: a stray `[/x]` used to crash one)."""

from __future__ import annotations

from collections.abc import Iterator

import typer
from typer.testing import CliRunner

from firm.cli.main import app


def _paths(command: object, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _paths(sub, [*path, name])


def test_every_help_renders() -> None:
    paths = list(_paths(typer.main.get_command(app), []))
    assert len(paths) > 40 and ["job", "submit"] in paths and ["pipeline", "run"] in paths
    runner = CliRunner()
    failures = {}
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        if result.exit_code != 0 or "Usage" not in result.output:
            failures[" ".join(path)] = repr(result.exception)
    assert failures == {}
