"""`firmctl bench`: FIRM-Bench: evaluate critics against human scores."""

from __future__ import annotations

import typer

app = typer.Typer(help="FIRM-Bench: evaluate critics against human scores.", no_args_is_help=True)
