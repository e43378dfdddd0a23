"""`firmctl models`: Build tiny models for tests and the local quickstart."""

from __future__ import annotations

from pathlib import Path

import typer

from firm.cli._common import cli_errors, echo_json, library_output_to_stderr
from firm.errors import InputError

app = typer.Typer(help="Build tiny models for tests and the local quickstart.", no_args_is_help=True)


@app.command("tiny-critic")
@cli_errors
def tiny_critic(
    out: Path = typer.Option(..., "--out", help="directory to write the critic into (created if missing)"),
    size: str = typer.Option(
        "tiny", "--size", help="tiny (hidden 64, 2 layers) | small (hidden 384, 6 layers)"
    ),
    format_steps: int = typer.Option(
        0,
        "--format-steps",
        help="teach FIRM's answer formats for this many steps so answers parse (0: untrained)",
    ),
    seed: int = typer.Option(0, "--seed", help="random seed of the weights"),
) -> None:
    """Write a random-init tiny Qwen3-VL critic (model, tokenizer, processor) loadable by `Critic`."""
    from firm.models.tiny import SPECS, build_tiny_critic

    if size not in SPECS:
        raise InputError(f"unknown --size {size!r}; expected one of {', '.join(SPECS)}")
    if format_steps < 0:
        raise InputError(f"--format-steps must be >= 0, got {format_steps}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"--out {out}: directory is not empty")
    try:
        with library_output_to_stderr():  # one JSON document on stdout or one error line, nothing else
            path = build_tiny_critic(out, size=size, seed=seed, format_steps=format_steps)  # type: ignore[arg-type]
    except OSError as exc:  # e.g. a parent that is a file, or a read-only location
        raise InputError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    echo_json({"path": str(path.resolve()), "size": size, "format_steps": format_steps})
