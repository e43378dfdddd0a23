"""`firmctl reward`: Base-and-Bonus rewards (CME for editing, QMA for generation) from raw 1-5 scores."""

from __future__ import annotations

import typer

app = typer.Typer(help="Base-and-Bonus rewards (CME for editing, QMA for generation) from raw 1-5 scores.", no_args_is_help=True)
