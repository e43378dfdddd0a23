"""`firmctl critic parse`."""

from __future__ import annotations

from firm.cli.critic_cmd import app  # noqa: F401  (commands register on the critic group)
