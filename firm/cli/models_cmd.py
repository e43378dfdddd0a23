"""`firmctl models`: Build tiny models for tests and the local quickstart."""

from __future__ import annotations

import typer

app = typer.Typer(help="Build tiny models for tests and the local quickstart.", no_args_is_help=True)
