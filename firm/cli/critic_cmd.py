"""`firmctl critic`: Critic models: parse critic text, score samples, train critics."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Critic models: parse critic text, score samples, train critics.", no_args_is_help=True
)
