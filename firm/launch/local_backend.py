"""`LocalBackend`: run a job spec on this machine with torchrun, detached, inspectable across CLI calls.

Each job lives in `$FIRM_HOME/jobs/<name>/`:

    job.json        the resolved job (command, env, checkpoint prefix)
    state.json      phase, pids, times, exit code, attempts (written atomically by the supervisor)
    logs/           master-0.log (rank 0's node), worker-<i>.log — the same replicas a PyTorchJob has
    supervisor.log  the supervisor's own output (empty unless something went wrong outside the job)

`submit` writes the job and starts `python -m firm.launch.supervisor --detach`; `status`, `logs`, `cancel`, `list`
read and signal what it left there, so they work from any later `firmctl` call. A job whose last attempt failed or
was cancelled can be submitted again: it keeps its name and checkpoint prefix and continues from its last checkpoint
(`--resume auto`). A job that succeeded is never started over.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firm.launch.backend import TERMINAL, JobBackend, JobError, JobNotFound, JobStatus
from firm.launch.spec import ResolvedJob
from firm.processes import pid_alive

CANCEL_TIMEOUT_S = 60.0


def read_state(job_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((job_dir / "state.json").read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise JobError(f"{job_dir / 'state.json'}: unreadable job state ({exc})") from None


def write_state(job_dir: Path, state: dict[str, Any]) -> None:
    """Atomic: readers see the old state or the new one, never half of one."""
    tmp = job_dir / f".state.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(job_dir / "state.json")


def _alive(pid: int | None) -> bool:
    """True when `pid` is a live (non-zombie) FIRM supervisor."""
    return pid_alive(pid, b"firm.launch.supervisor")


def _reason(exit_code: int | None) -> str | None:
    """What a FIRM exit code means: `stopped_by_alarm` for an RL run that a reward-hacking alarm stopped (the
    message holds its `error: stopped_by_alarm: ...` line: which alarm, at which step, with which values)."""
    from firm.rl.alarms import ALARM_EXIT_CODE, STOPPED_BY_ALARM

    return STOPPED_BY_ALARM if exit_code == ALARM_EXIT_CODE else None


def _ts(v: Any) -> datetime | None:
    return datetime.fromtimestamp(float(v), tz=UTC) if v else None


class LocalBackend(JobBackend):
    name = "local"

    def __init__(self, home: Path | None = None) -> None:
        from firm.config import get_settings

        self.root = (home or get_settings().home) / "jobs"

    def _dir(self, name: str) -> Path:
        return self.root / name

    def _require(self, name: str) -> Path:
        d = self._dir(name)
        if not (d / "job.json").is_file():
            known = ", ".join(sorted(p.name for p in self.root.glob("*") if (p / "job.json").is_file()))
            raise JobNotFound(
                f"no local job named {name!r} (local jobs: {known or 'none'}; under {self.root})"
            )
        return d

    def _supervisor_pid(self, d: Path, state: dict[str, Any]) -> int | None:
        pid = state.get("supervisor_pid")
        if pid is None and (d / "supervisor.pid").is_file():
            with contextlib.suppress(ValueError):
                pid = int((d / "supervisor.pid").read_text())
        return pid

    # ------------------------------------------------------------------------------------------- submit

    def _check_machine(self, job: ResolvedJob) -> None:
        if job.gpus_per_node > 0:
            import torch

            have = torch.cuda.device_count()
            if have < job.gpus_per_node:
                raise JobError(
                    f"job {job.name}: pool {job.spec.pool!r} asks for {job.gpus_per_node} GPUs per node and this "
                    f"machine has {have}; run it on the cluster, or locally with a CPU pool (pool=cpu)"
                )

    def submit(self, job: ResolvedJob) -> JobStatus:
        if job.backend != "local":
            raise JobError(f"job {job.name} was resolved for the {job.backend} backend, not local")
        self._check_machine(job)
        d = self._dir(job.name)
        attempts = 1
        if (d / "job.json").is_file():
            st = self.status(job.name)
            if not st.done:
                raise JobError(
                    f"job {job.name} is already {st.phase.lower()}; follow it with 'firmctl job logs {job.name} "
                    "--backend local --follow' or stop it with 'firmctl job cancel'"
                )
            if st.succeeded:
                raise JobError(
                    f"job {job.name} already finished successfully ({d}); a finished run is never overwritten — "
                    "give the job a new name (name=...) to train again"
                )
            attempts = st.attempts + 1  # failed or cancelled: continue from its last checkpoint
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / ".job.json.tmp"
        tmp.write_text(job.model_dump_json(indent=2))
        tmp.replace(d / "job.json")
        with contextlib.suppress(FileNotFoundError):
            (d / "supervisor.pid").unlink()
        write_state(
            d,
            {
                "phase": "Pending",
                "created": time.time(),
                "attempts": attempts,
                "cwd": os.getcwd(),
                "message": "" if attempts == 1 else f"attempt {attempts}: resuming from the last checkpoint",
            },
        )
        proc = subprocess.run(
            [sys.executable, "-m", "firm.launch.supervisor", "--detach", str(d)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            write_state(d, {**read_state(d), "phase": "Failed", "message": proc.stderr.strip()[-500:]})
            raise JobError(
                f"job {job.name}: could not start the local supervisor: {proc.stderr.strip()[-300:]}"
            )
        return self.status(job.name)

    # ------------------------------------------------------------------------------------------- inspect

    def status(self, name: str) -> JobStatus:
        d = self._require(name)
        state = read_state(d)
        phase = state.get("phase", "Unknown")
        message = state.get("message", "")
        pid = self._supervisor_pid(d, state)
        if phase not in TERMINAL and not _alive(pid):
            # give a just-started supervisor a moment to appear before declaring it lost
            fresh = phase == "Pending" and time.time() - float(state.get("created", 0)) < 30
            if not fresh:
                phase = "Failed"
                message = f"the job's supervisor (pid {pid}) is gone; its processes were lost"
        job = json.loads((d / "job.json").read_text())
        nodes = int(job["spec"]["nodes"])
        replicas = {"master": {"replicas": 1}} | ({"worker": {"replicas": nodes - 1}} if nodes > 1 else {})
        return JobStatus(
            name=name,
            backend="local",
            phase=phase,
            message=message,
            created=_ts(state.get("created")),
            started=_ts(state.get("started")),
            finished=_ts(state.get("finished")),
            exit_code=state.get("exit_code"),
            reason=_reason(state.get("exit_code")),
            attempts=int(state.get("attempts", 1)),
            checkpoint_uri=job.get("checkpoint_uri"),
            replicas=replicas,
        )

    def list(self) -> list[JobStatus]:
        if not self.root.is_dir():
            return []
        return [self.status(p.name) for p in sorted(self.root.iterdir()) if (p / "job.json").is_file()]

    def logs(self, name: str, replica: str = "master", index: int = 0, follow: bool = False) -> Iterator[str]:
        d = self._require(name)
        replica = replica.lower()
        if replica not in ("master", "worker"):
            raise JobError(f"replica must be master or worker, got {replica!r}")
        log = d / "logs" / f"{replica}-{index}.log"
        if replica == "master" and index != 0:
            raise JobError("a job has one master (index 0)")
        nodes = json.loads((d / "job.json").read_text())["spec"]["nodes"]
        if replica == "worker" and index >= nodes - 1:
            raise JobError(f"job {name} has {nodes - 1} worker replica(s); index {index} does not exist")
        return self._tail(name, log, follow)

    def _tail(self, name: str, log: Path, follow: bool) -> Iterator[str]:
        pos, buf = 0, b""
        while True:
            if log.is_file():
                with open(log, "rb") as f:
                    f.seek(pos)
                    buf += f.read()
                    pos = f.tell()
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    yield ln.decode(errors="replace")
            if not follow:
                break
            if self.status(name).done and not _grew(log, pos):
                break
            time.sleep(0.2)
        if buf:
            yield buf.decode(errors="replace")

    # ------------------------------------------------------------------------------------------- cancel

    def cancel(self, name: str) -> JobStatus:
        d = self._require(name)
        st = self.status(name)
        if st.done:
            return st
        state = read_state(d)
        pid = self._supervisor_pid(d, state)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)  # the supervisor stops the whole process tree and records Cancelled
            deadline = time.monotonic() + CANCEL_TIMEOUT_S
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):  # it did not manage: take its process group down with it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        state = read_state(d)
        if state.get("phase") not in TERMINAL:
            for node_pid in (state.get("node_pids") or {}).values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(node_pid), signal.SIGKILL)
            write_state(d, {**state, "phase": "Cancelled", "finished": time.time(), "message": "cancelled"})
        return self.status(name)


def _grew(log: Path, pos: int) -> bool:
    try:
        return log.stat().st_size > pos
    except FileNotFoundError:
        return False
