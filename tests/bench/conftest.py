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


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The tiny critic gains nothing from intra-op threads, and on a busy 2-core machine torch's default 2 threads
    make generate ~10× slower (measured: benchmarks/firm_bench.py). Restored after each module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
