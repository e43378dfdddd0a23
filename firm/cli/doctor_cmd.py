"""`firmctl doctor`: report what is installed and reachable, one `STATUS name detail` line per check.

OK: present. MISSING: a required component is absent. FAIL: present but unusable (e.g. the object store cannot be
reached). WARN: an optional component (helm) is absent, or only the buckets are missing. Exit code 1 when anything
required is MISSING or FAIL. Secrets are never printed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from firm.cli._common import cli_errors, echo_out

Check = tuple[str, str, str]  # (status, name, detail)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    ok = sys.version_info >= (3, 11)
    return ("OK" if ok else "MISSING", "python", f"{platform.python_version()} ({sys.executable})")


def check_torch() -> Check:
    if _version("torch") is None:
        return ("MISSING", "torch", "not installed")
    try:
        import torch
    except Exception as exc:  # a broken install must be reported, not crash the doctor
        return ("FAIL", "torch", f"import failed: {exc}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        device = f"cuda ({torch.cuda.device_count()}x {names})"
    else:
        device = f"cpu ({os.cpu_count()} cores)"
    return ("OK", "torch", f"{torch.__version__}, device {device}")


def check_package(dist: str) -> Check:
    v = _version(dist)
    return ("OK", dist, v) if v else ("MISSING", dist, "not installed")


def tritonserver_path() -> Path | None:
    """The tritonserver binary shipped inside the nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver" / "bin" / "tritonserver"


def check_tritonserver() -> Check:
    path = tritonserver_path()
    if path is None:
        return ("MISSING", "tritonserver", "nvidia-pytriton is not installed")
    if not (path.is_file() and os.access(path, os.X_OK)):
        return ("MISSING", "tritonserver", f"no executable at {path}")
    return ("OK", "tritonserver", f"{path} (nvidia-pytriton {_version('nvidia-pytriton')})")


def check_helm() -> Check:
    helm = shutil.which("helm")
    if helm is None:
        return ("WARN", "helm", "not on PATH (optional: needed only to deploy the charts)")
    try:
        out = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, timeout=10)
        detail = out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ("WARN", "helm", f"{helm} does not run: {exc}")
    return ("OK", "helm", f"{detail} ({helm})")


def check_settings() -> Check:
    """The FIRM settings (FIRM_CONFIG / $FIRM_HOME/config.yaml and FIRM_* variables) parse: reported on their own
    line, so a malformed settings file is never mistaken for an object-store problem."""
    import os

    from firm.config import get_settings
    from firm.errors import ConfigError

    try:
        get_settings(fresh=True)
    except ConfigError as exc:
        return ("FAIL", "settings", str(exc))
    explicit = os.environ.get("FIRM_CONFIG")
    return ("OK", "settings", f"FIRM_CONFIG={explicit}" if explicit else "defaults, FIRM_* environment")


def check_object_store() -> Check:
    from firm.config import get_settings
    from firm.errors import ConfigError
    from firm.storage.health import check_store

    try:
        settings = get_settings()
    except ConfigError:
        return ("MISSING", "object store", "not checked: the settings above do not parse")
    status, detail = check_store(settings)
    return (status, "object store", detail)


def run_checks() -> list[Check]:
    return [
        check_python(),
        check_torch(),
        check_package("transformers"),
        check_package("diffusers"),
        check_tritonserver(),
        check_helm(),
        check_settings(),
        check_object_store(),
    ]


@cli_errors
def doctor() -> None:
    """Check the installation and the configured services (OK / WARN / MISSING / FAIL per line)."""
    checks = run_checks()
    for status, name, detail in checks:
        echo_out(f"{status:<8} {name:<13} {detail}")
    if any(status in ("MISSING", "FAIL") for status, _, _ in checks):
        raise typer.Exit(1)
