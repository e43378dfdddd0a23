"""A named local reward service that outlives the process that started it: `firmctl serve start`, detached.

Pipeline steps run as separate processes: the deploy step must leave a server running for the RL step, and the
exit handler must find and stop it. `start_service(name, repository)` starts `python -m firm.cli.main serve start`
in its own session on free loopback ports, waits until it prints its (ready) endpoints, and records them with its pid
in `$FIRM_HOME/services/<name>.json`; `stop_service(name)` stops it (SIGTERM: Triton drains, then the whole process
group is killed if it lingers) and removes the record. tritonserver dies with its `serve start` parent, so stopping
that one process stops the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from firm.errors import FirmError
from firm.processes import pid_alive


class ServiceError(FirmError):
    """A local reward service could not be started or found."""


class ServiceRecord(BaseModel):
    name: str
    pid: int
    grpc: str
    http: str
    metrics: str
    log: str
    repository: str
    live: str | None = None  # the live repository it serves (rollouts: firm.launch.rollout)


def _root() -> Path:
    from firm.config import get_settings

    return get_settings().home / "services"


def get_service(name: str) -> ServiceRecord | None:
    """The record of a running service called `name` (None if there is none or it died)."""
    path = _root() / f"{name}.json"
    if not path.is_file():
        return None
    rec = ServiceRecord.model_validate_json(path.read_text())
    return rec if pid_alive(rec.pid) else None


def start_service(name: str, repository: str, *, startup_timeout: float = 600.0) -> ServiceRecord:
    """Start (or return the already running) service `name` serving `repository` on free loopback ports, from a
    live repository (`$FIRM_HOME/services/<name>.live`: a critic can be rolled out to it, `firm.launch.rollout`;
    a restart keeps the version promoted last)."""
    existing = get_service(name)
    if existing is not None:
        if existing.repository != repository:
            raise ServiceError(
                f"reward service {name!r} already runs {existing.repository}; stop it first (pid {existing.pid})"
            )
        return existing
    root = _root()
    root.mkdir(parents=True, exist_ok=True)
    out_path = root / f"{name}.out"
    log_path = root / f"{name}.tritonserver.log"
    live = root / f"{name}.live"
    cmd = [
        sys.executable, "-m", "firm.cli.main", "serve", "start", "--repository", repository,
        "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
        "--startup-timeout", str(startup_timeout), "--log-file", str(log_path), "--live-dir", str(live),
    ]  # fmt: skip
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + startup_timeout + 30
    while time.monotonic() < deadline:
        text = out_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("{") and '"grpc"' in line:
                ep = json.loads(line)
                rec = ServiceRecord(
                    name=name, pid=proc.pid, grpc=ep["grpc"], http=ep["http"], metrics=ep["metrics"],
                    log=str(log_path), repository=repository, live=str(live),
                )  # fmt: skip
                tmp = root / f".{name}.json.tmp"
                tmp.write_text(rec.model_dump_json(indent=2))
                tmp.replace(root / f"{name}.json")
                return rec
        if proc.poll() is not None:
            errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
            raise ServiceError(
                f"reward service {name!r} failed to start: {(errors or text.splitlines() or ['no output'])[-1]}"
            )
        time.sleep(0.2)
    _kill_group(proc.pid)
    raise ServiceError(f"reward service {name!r} not ready after {startup_timeout:g} s (log: {log_path})")


def _kill_group(pid: int, grace: float = 30.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_service(name: str) -> bool:
    """Stop service `name` if it runs (True when something was stopped); its record is removed either way."""
    path = _root() / f"{name}.json"
    if not path.is_file():
        return False
    rec = ServiceRecord.model_validate_json(path.read_text())
    running = pid_alive(rec.pid)
    if running:
        _kill_group(rec.pid)
    path.unlink(missing_ok=True)
    return running
