"""`firmctl storage`: Object store: list, copy, initialise buckets (file:// and s3://)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Object store: list, copy, initialise buckets (file:// and s3://).", no_args_is_help=True)
