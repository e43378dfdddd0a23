"""`firmctl rl`: RL on diffusion policies with FIRM rewards."""

from __future__ import annotations

import typer

app = typer.Typer(help="RL on diffusion policies with FIRM rewards.", no_args_is_help=True)
