"""Curation tests run with their own FIRM_HOME (journals, the default teacher cache) and one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _firm_home(firm_home: Path) -> Path:
    return firm_home
