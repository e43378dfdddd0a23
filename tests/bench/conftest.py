"""Bench tests run with their own FIRM_HOME so published-dataset caches never touch the user's ~/.firm."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _firm_home(firm_home: Path) -> Path:
    return firm_home


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The tiny critic gains nothing from intra-op threads, and on a busy 2-core machine torch's default 2 threads
    make generate ~10× slower (measured: benchmarks/firm_bench.py). Restored after each module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
