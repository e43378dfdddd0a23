"""`run_job`: submit a job spec, follow rank 0's log, wait for the end, and own the job while doing so.

What a pipeline's launcher step does (`pipelines.components.launch`), usable from any Python code:

- resolve the spec and re-attach to the job of that name when it is still running or has succeeded (the step was
  evicted or restarted: its job name is deterministic, `step_job_spec`), else submit it (a failed earlier attempt
  of the same name resumes from its checkpoint);
- stream the master's log line by line to `on_line` (the step's log) and keep the last JSON object rank 0 printed
  (the entrypoints end with one: SFT's `TrainResult`, RL's summary);
- wait until the job ends; raise `JobError` with the job's own message when it failed, or after `timeout` seconds
  (cancelling it);
- cancel the job only when the stop is explicit (`firm.launch.kfp_run.stop_cancels_job`): SIGTERM/SIGINT outside
  a KFP pod (the user), or inside one when the pipeline run was terminated. An evicted or restarted step leaves its
  job running (bounded by its `activeDeadlineSeconds`) for the step's retry to re-attach to.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from firm.launch.backend import BackendName, JobBackend, JobError, JobNotFound, JobStatus
from firm.launch.backends import get_backend
from firm.launch.spec import JobSpec, ResolvedJob, resolve_job


class JobRun(BaseModel):
    """A finished job: its resolved spec, final status and rank 0's closing JSON (if it printed one)."""

    job: ResolvedJob
    status: JobStatus
    result: dict[str, Any] | None = None


class _Stop(BaseException):  # not an Exception: API-call error handlers must not swallow it
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class _Signals:
    """SIGTERM/SIGINT received while a step waits for its job. The handler only records the signal and wakes the
    waiting loop, which acts on it between API calls: raising from a signal handler could interrupt an HTTP call
    halfway and leave the client's connection pool locked, so that the cancel which follows never returns."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.event = threading.Event()

    def handler(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        self.event.set()

    def check(self) -> None:
        """Raise `_Stop` if a signal came in."""
        if self.received:
            raise _Stop(self.received[0])


@contextlib.contextmanager
def _cancel_on_signal() -> Iterator[_Signals]:
    """Record SIGTERM/SIGINT for the main thread's wait loop (elsewhere signals cannot be handled: no-op)."""
    signals = _Signals()
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    old = {s: signal.signal(s, signals.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield signals
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _wait(b: JobBackend, name: str, timeout: float | None, poll: float, signals: _Signals) -> JobStatus:
    """`JobBackend.wait`, woken at once by a signal (then `_Stop`) instead of sleeping through it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        signals.check()
        st = b.status(name)
        if st.done:
            return st
        if deadline is not None and time.monotonic() > deadline:
            raise JobError(f"job {name} did not finish within {timeout:g} s (phase {st.phase})")
        signals.event.wait(poll)


def _json_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not (line.startswith("{") and line.endswith("}")):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def attach_or_submit(b: JobBackend, job: ResolvedJob, on_line: Callable[[str], None] = print) -> JobStatus:
    """The job's status after re-attaching to a running or succeeded job of its name, or after submitting it."""
    try:
        existing: JobStatus | None = b.status(job.name)
    except JobNotFound:
        existing = None
    if existing is not None and (not existing.done or existing.succeeded):
        on_line(
            f"[firm] job {job.name} exists ({existing.phase}): re-attaching to it instead of submitting it again"
        )
        return existing
    status = b.submit(job)
    on_line(f"[firm] job {job.name} submitted ({b.name}): {status.phase}")
    return status


def run_job(
    spec: JobSpec,
    backend: BackendName,
    *,
    namespace: str | None = None,
    timeout: float | None = None,
    on_line: Callable[[str], None] = print,
    poll: float = 1.0,
    stop_cancels: Callable[[], tuple[bool, str]] | None = None,
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

    with _cancel_on_signal() as signals:
        try:
            status = attach_or_submit(b, job, on_line)
            signals.check()  # a signal during the submit counts once the job exists
            logs = threading.Thread(target=pump_logs, daemon=True)
            logs.start()
            status = _wait(b, job.name, timeout, poll, signals)
            logs.join(timeout=30.0)  # the tail of the log, written as the job ended
        except _Stop as stop:
            from firm.launch.kfp_run import stop_cancels_job

            cancel, why = (stop_cancels or (lambda: stop_cancels_job(namespace)))()
            if not cancel:
                on_line(f"[firm] signal {stop.signum}: {why}; job {job.name} keeps running")
                raise JobError(
                    f"job {job.name} left running: {why} (signal {stop.signum}); retrying the step re-attaches to it"
                ) from None
            on_line(f"[firm] stopped by signal {stop.signum} ({why}): cancelling job {job.name}")
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
