"""`firmctl quickstart`: the `firm` pipeline through the KFP local runner on tiny models (what `make quickstart` runs)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

from firm.cli._common import cli_errors, echo_json, library_output_to_stderr


@cli_errors
def quickstart(
    workdir: Path = typer.Option(Path("runs/quickstart"), "--workdir", help="where every stage writes"),
    task: str = typer.Option("edit", "--task", help="edit | gen | both (both: one pipeline run per task)"),
    size: str = typer.Option(
        "tiny",
        "--size",
        help="tiny (about 2–3 minutes on 2 CPU cores) | small (more data, steps and prompts)",
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="show every stage's whole output (by default it goes to the stage's log)",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="empty a non-empty --workdir first (a quickstart's own workdir is reused)"
    ),
) -> None:
    """Run the `firm` pipeline locally — curate (teacher) → train critic (2 processes) → bench → export to Triton →
    deploy → RL with rewards over gRPC → evaluate before/after — and write DIR/report/{index.html,summary.json}.
    Prints one line per stage on stderr (each stage's whole output goes to DIR/pipeline-runs/RUN/logs/STAGE.log),
    then the report path and the checks as one JSON line on stdout."""
    from firm.errors import ConfigError

    if task not in ("edit", "gen", "both"):
        raise ConfigError(f"--task {task}: expected edit, gen or both")
    if size not in ("tiny", "small"):
        raise ConfigError(f"--size {size}: expected tiny or small")
    from firm.quickstart.run import check_workdir

    check_workdir(workdir.resolve(), overwrite=overwrite)  # before anything is built
    with library_output_to_stderr(), contextlib.redirect_stdout(sys.stderr):  # the local runner's step logs
        from firm.quickstart import run_quickstart

        report = run_quickstart(workdir, task=task, size=size, verbose=verbose)  # type: ignore[arg-type]
    import json

    summary = json.loads((report / "summary.json").read_text())
    echo_json(
        {
            "report": str(report / "index.html"),
            "summary": str(report / "summary.json"),
            "ok": summary["ok"],
            "checks": {t: v["checks"] for t, v in summary["tasks"].items()},
        }
    )
