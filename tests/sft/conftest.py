"""Fixtures for the critic SFT tests: a learnable synthetic dataset and config builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def sft_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable critic SFT dataset: execution = 1 + number of red squares drawn (of 4 requested).

    112×112 images (16 image tokens each in the tiny critic, 4 per grid cell): the count is learned in ~200 steps.
    """
    from firm.curation.synthetic_sft import write_synthetic_sft_dataset

    out = tmp_path_factory.mktemp("sft-data") / "synthetic"
    write_synthetic_sft_dataset(
        out, n_edit=400, axes=["execution"], requested=4, val_fraction=0.05, seed=0, size=112
    )
    return out


@pytest.fixture(autouse=True)
def _firm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Keep each test's FIRM_HOME (local store, caches) inside its tmp dir."""
    from firm.config import get_settings

    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "firm-home"))
    monkeypatch.delenv("FIRM_STORE_URI", raising=False)
    get_settings(fresh=True)
    yield
    get_settings(fresh=True)
