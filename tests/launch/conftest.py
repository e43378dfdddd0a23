"""Fixtures for the launch tests: a fake Kubernetes API endpoint with a kubeconfig, a tiny critic + dataset laid out
where the tiny job spec expects them, and an isolated FIRM_HOME."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.launch.k8s_api import FakeKubeAPI, serve, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "k8s" / "jobs"


@pytest.fixture(autouse=True)
def _firm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from firm.config import get_settings

    home = tmp_path / "firm-home"
    monkeypatch.setenv("FIRM_HOME", str(home))
    for var in ("FIRM_STORE_URI", "FIRM_NAMESPACE", "FIRM_CONFIG", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    get_settings(fresh=True)
    yield home
    get_settings(fresh=True)


def _crd_validator() -> Any:
    from tests.fixtures.crd import CRD_PATH, validate_pytorchjob

    return validate_pytorchjob if CRD_PATH.is_file() else None


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeAPI]:
    """A fake API server (namespace `firm`) on 127.0.0.1 and KUBECONFIG pointing at it."""
    api = FakeKubeAPI(namespaces=("firm",), validate=_crd_validator())
    with serve(api) as url:
        api.url = url  # type: ignore[attr-defined]
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        monkeypatch.setenv("FIRM_NAMESPACE", "firm")
        yield api


@pytest.fixture(scope="session")
def tiny_sft_inputs(tmp_path_factory: pytest.TempPathFactory, tiny_critic_dir: Path) -> Path:
    """A directory holding `runs/tiny-critic` and `runs/synthetic-sft` as the tiny_cpu recipe expects them."""
    from firm.curation.synthetic_sft import write_synthetic_sft_dataset

    root = tmp_path_factory.mktemp("tiny-sft-inputs")
    (root / "runs").mkdir()
    shutil.copytree(tiny_critic_dir, root / "runs" / "tiny-critic")
    write_synthetic_sft_dataset(
        root / "runs" / "synthetic-sft", n_edit=200, axes=["execution"], requested=4, val_fraction=0.05,
        seed=0, size=112,
    )  # fmt: skip
    return root


@pytest.fixture
def job_cwd(tmp_path: Path, tiny_sft_inputs: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with the tiny inputs under runs/ (the job writes its run dir there)."""
    cwd = tmp_path / "work"
    (cwd / "runs").mkdir(parents=True)
    for name in ("tiny-critic", "synthetic-sft"):
        os.symlink(tiny_sft_inputs / "runs" / name, cwd / "runs" / name)
    monkeypatch.chdir(cwd)
    return cwd
