"""`run_job`: submit a job spec, follow rank 0's log, wait for the end, and own the job while doing so.

What a pipeline's launcher step does (`pipelines.components.launch`), usable from any Python code:

- resolve and submit the spec with the chosen backend (a failed earlier attempt of the same name resumes from its
  checkpoint; a finished one is refused);
- stream the master's log line by line to `on_line` (the step's log) and keep the last JSON object rank 0 printed
  (the entrypoints end with one: SFT's `TrainResult`, RL's summary);
- wait until the job ends; raise `JobError` with the job's own message when it failed, or after `timeout` seconds
  (cancelling it);
- cancel the job when this process is told to stop (SIGTERM from a terminated KFP run, SIGINT) — a job never
  outlives the step that launched it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from firm.launch.backend import BackendName, JobError, JobStatus
from firm.launch.backends import get_backend
from firm.launch.spec import JobSpec, ResolvedJob, resolve_job


class JobRun(BaseModel):
    """A finished job: its resolved spec, final status and rank 0's closing JSON (if it printed one)."""

    job: ResolvedJob
    status: JobStatus
    result: dict[str, Any] | None = None


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _cancel_on_signal() -> Iterator[list[int]]:
    """Turn SIGTERM/SIGINT into `_Stop` in the main thread (elsewhere signals cannot be handled: no-op)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        raise _Stop(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _json_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not (line.startswith("{") and line.endswith("}")):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def run_job(
    spec: JobSpec,
    backend: BackendName,
    *,
    namespace: str | None = None,
    timeout: float | None = None,
    on_line: Callable[[str], None] = print,
    poll: float = 1.0,
) -> JobRun:
    """Submit `spec`, stream its master log to `on_line`, wait; `JobError` unless it succeeded (see module doc)."""
    b = get_backend(backend, namespace=namespace)
    job = resolve_job(spec, b.name)
    result: list[dict[str, Any]] = []

    def pump_logs() -> None:
        """Rank 0's log into the step's log, while the main thread waits (and receives the signals)."""
        try:
            for line in b.logs(job.name, "master", 0, follow=True):
                on_line(line)
                if (obj := _json_line(line)) is not None:
                    result.append(obj)
        except Exception as exc:  # the log is a convenience: losing it never fails the job
            on_line(f"[firm] log stream of job {job.name} ended: {exc}")

    with _cancel_on_signal():
        try:
            status = b.submit(job)
            on_line(f"[firm] job {job.name} submitted ({b.name}): {status.phase}")
            logs = threading.Thread(target=pump_logs, daemon=True)
            logs.start()
            status = b.wait(job.name, timeout=timeout, poll=poll)
            logs.join(timeout=30.0)  # the tail of the log, written as the job ended
        except _Stop as stop:
            on_line(f"[firm] stopped by signal {stop.signum}: cancelling job {job.name}")
            b.cancel(job.name)
            raise JobError(f"job {job.name} cancelled: the step was stopped (signal {stop.signum})") from None
        except JobError as exc:
            if "did not finish within" not in str(exc):
                raise
            with contextlib.suppress(JobError):
                b.cancel(job.name)
            raise JobError(f"job {job.name} did not finish within {timeout:g} s and was cancelled") from None
    on_line(f"[firm] job {job.name}: {status.phase}{f' — {status.message}' if status.message else ''}")
    if not status.succeeded:
        raise JobError(f"job {job.name} {status.phase.lower()}: {status.message or 'see its log above'}")
    return JobRun(job=job, status=status, result=result[-1] if result else None)
