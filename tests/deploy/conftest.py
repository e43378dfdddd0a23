"""Fixtures for the deployment tests: helm/kubectl/hadolint/checkov (installed once into `.cache/test-tools/`, see
`tests/deploy/tools.py`), and helpers that render the chart and the kustomize overlays into parsed objects."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from firm.config import FirmSettings, get_settings
from tests.deploy import tools
from tests.deploy.render_manifests import CHART, REPO, helm_env

CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
OVERLAY_DIRS = sorted(p for p in (REPO / "k8s" / "overlays").iterdir() if p.is_dir())
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile*"))
SKIPS_FILE = REPO / "deploy-checks-skips.yaml"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
RENDERS = ["default", *(p.stem for p in CI_VALUES)]
VALUE_FILES: dict[str, list[Path]] = {"default": [], **{p.stem: [p] for p in CI_VALUES}}


def merged_values(name: str) -> dict[str, Any]:
    """values.yaml with a ci/ file on top, merged the way Helm merges (maps deeply, lists replaced)."""

    def merge(base: Any, top: Any) -> Any:
        if isinstance(base, dict) and isinstance(top, dict):
            return {k: merge(base.get(k), top[k]) if k in base else top[k] for k in top} | {
                k: v for k, v in base.items() if k not in top
            }
        return top

    out = VALUES
    for path in VALUE_FILES[name]:
        out = merge(out, yaml.safe_load(path.read_text()))
    return out


def load_settings(data: dict[str, str], monkeypatch: pytest.MonkeyPatch, home: Path) -> FirmSettings:
    """FirmSettings from exactly the ConfigMap's data as the environment (what envFrom gives a pod)."""
    import os

    for key in [k for k in os.environ if k.startswith("FIRM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FIRM_HOME", str(home))
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    try:
        return get_settings(fresh=True)
    finally:
        for key in data:
            monkeypatch.delenv(key)
        get_settings(fresh=True)


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Helm:
    """The helm binary with private HELM_* directories (nothing read from or written to the user's helm setup)."""

    exe: Path
    env: dict[str, str]

    def __call__(self, *args: str | Path, check: bool = True) -> Run:
        proc = subprocess.run(
            [str(self.exe), *map(str, args)], capture_output=True, text=True, env=self.env, timeout=120
        )
        run = Run(proc.returncode, proc.stdout, proc.stderr)
        if check and run.rc != 0:
            pytest.fail(f"helm {' '.join(map(str, args))} failed ({run.rc}):\n{run.text}", pytrace=False)
        return run

    def template(
        self, *values: Path, release: str = "firm", namespace: str = "firm", extra: tuple = ()
    ) -> str:
        args: list[str | Path] = ["template", release, CHART, "-n", namespace]
        for v in values:
            args += ["-f", v]
        return self(*args, *extra).out


def objects(text: str) -> list[dict[str, Any]]:
    # libyaml: ~12x the pure-Python loader
    return [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind by name; where the chart renders a name in several namespaces (settings, accounts per
    pipeline namespace) the first one, which is the release namespace's."""
    out: dict[str, dict[str, Any]] = {}
    for o in objs:
        if o["kind"] == kind:
            out.setdefault(o["metadata"]["name"], o)
    return out


@pytest.fixture(scope="session")
def kube_bins() -> tuple[Path, Path]:
    return tools.kube_tools()


@pytest.fixture(scope="session")
def helm(kube_bins: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(kube_bins[0], helm_env(tmp_path_factory.mktemp("helm-home")))


@pytest.fixture(scope="session")
def kustomize(kube_bins: tuple[Path, Path]) -> Callable[[Path], str]:
    def run(path: Path) -> str:
        proc = subprocess.run(
            [str(kube_bins[1]), "kustomize", str(path)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
        return proc.stdout

    return run


@pytest.fixture(scope="session")
def write_values(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[dict[str, Any]], Path]]:
    root = tmp_path_factory.mktemp("values")
    counter = iter(range(10**6))

    def write(values: dict[str, Any]) -> Path:
        path = root / f"values-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    yield write


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    """The chart rendered with its defaults and with every ci/*.yaml (release `firm`, namespace `firm`)."""
    out = {"default": objects(helm.template())}
    for path in CI_VALUES:
        out[path.stem] = objects(helm.template(path))
    return out


@pytest.fixture(scope="session")
def overlays(kustomize: Callable[[Path], str]) -> dict[str, list[dict[str, Any]]]:
    return {p.name: objects(kustomize(p)) for p in OVERLAY_DIRS}


@pytest.fixture(scope="session")
def skips() -> dict[str, Any]:
    data = yaml.safe_load(SKIPS_FILE.read_text())
    assert isinstance(data, dict), f"{SKIPS_FILE}: expected a mapping"
    return data
