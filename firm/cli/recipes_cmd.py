"""`firmctl recipes`: Shipped recipe configs."""

from __future__ import annotations

import typer

app = typer.Typer(help="Shipped recipe configs.", no_args_is_help=True)
