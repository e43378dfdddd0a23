"""Bench tests run with their own FIRM_HOME so published-dataset caches never touch the user's ~/.firm."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _firm_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from firm.config import get_settings

    home = tmp_path_factory.mktemp("firm_home")
    monkeypatch.setenv("FIRM_HOME", str(home))
    monkeypatch.delenv("FIRM_STORE_URI", raising=False)
    get_settings(fresh=True)
    yield home
    monkeypatch.undo()
    get_settings(fresh=True)
