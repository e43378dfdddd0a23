"""`firmctl quickstart`: the local end-to-end job on tiny models (what `make quickstart` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from firm.cli._common import cli_errors, echo_json, library_output_to_stderr


@cli_errors
def quickstart(
    workdir: Path = typer.Option(Path("runs/quickstart"), "--workdir", help="where every stage writes"),
    steps: int = typer.Option(240, "--steps", min=1, help="critic SFT steps"),
    serve: bool = typer.Option(
        True, "--serve/--no-serve", help="also serve the critic from Triton and score"
    ),
) -> None:
    """Build a tiny critic, curate data, train it, bench it against chance, serve it from Triton and score edits."""
    with library_output_to_stderr():
        from firm.quickstart import run_quickstart

        result = run_quickstart(workdir, steps=steps, serve=serve)
    echo_json(result)
