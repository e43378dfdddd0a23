"""`firmctl serve`: Reward service on Triton: export, start, score."""

from __future__ import annotations

import typer

app = typer.Typer(help="Reward service on Triton: export, start, score.", no_args_is_help=True)
