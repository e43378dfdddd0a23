"""`firmctl doctor`: report what is installed and reachable (filled in by the Foundation work)."""

from __future__ import annotations

import typer


def doctor() -> None:
    """Check the installation and the configured services."""
    raise typer.Exit(1)
