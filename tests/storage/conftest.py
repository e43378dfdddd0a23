"""Storage test fixtures: the same contract suite runs against the local store and a real S3 endpoint (moto)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from firm.config import get_settings

BIG = 20 * 1024 * 1024 + 12345  # >= 20 MiB and not a multiple of the part size


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "weights.bin"
    path.write_bytes(os.urandom(BIG))
    return path


@pytest.fixture
def firm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("FIRM_HOME", str(home))
    monkeypatch.delenv("FIRM_CONFIG", raising=False)
    get_settings(fresh=True)
    return home


@pytest.fixture
def s3_bucket(s3_env: dict[str, str], firm_home: Path) -> str:
    """A fresh, created bucket on the moto endpoint; settings point at it."""
    from firm.storage import S3Store

    get_settings(fresh=True)
    S3Store.from_settings(s3_env["bucket"], get_settings()).make_bucket()
    return s3_env["bucket"]


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path, firm_home: Path) -> Iterator[str]:
    """Root URI (ending in '/') of an empty area in the store under test."""
    if request.param == "local":
        (tmp_path / "store").mkdir()
        yield (tmp_path / "store").as_uri() + "/"
    else:
        bucket = request.getfixturevalue("s3_bucket")
        yield f"s3://{bucket}/area-{uuid.uuid4().hex[:6]}/"
    get_settings(fresh=True)
