"""One interface for running distributed jobs, whatever runs them: `JobBackend`.

- `LocalBackend` (`firm.launch.local_backend`): this machine, torchrun processes detached from the CLI, state and
  logs under `$FIRM_HOME/jobs/<name>/` — the embedded default.
- `PyTorchJobBackend` (`firm.launch.pytorchjob`): a Kubeflow Training Operator `PyTorchJob` through the
  kubeflow-training SDK's `TrainingClient`.

Code above this interface (the CLI, the KFP launcher component) never knows which one runs: it picks one by name
with `firm.launch.backends.get_backend`, which sits above this module and both implementations. A Kubeflow Trainer v2
`TrainJob` backend fits the same five verbs (its `TrainerClient` has train/get_job/get_job_logs/wait_for_job_status/
delete_job); it is not shipped because the `kubeflow` SDK that provides it installs over the same
`kubeflow/__init__.py` as kubeflow-training and cannot share an environment with it.

Phases, the same for every backend: Pending → Running (→ Restarting → Running) → Succeeded | Failed | Cancelled.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from firm.errors import FirmError
from firm.launch.spec import ResolvedJob

Phase = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Cancelled", "Unknown"]
TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed", "Cancelled"})
BackendName = Literal["local", "pytorchjob", "trainjob"]


class JobError(FirmError):
    """A job could not be submitted, found, or controlled; the message says what to check."""


class JobNotFound(JobError):
    """No job of that name (in that namespace)."""


class JobStatus(BaseModel):
    """Where a job is. `replicas`: per replica type (master/worker) counts of active/succeeded/failed pods."""

    name: str
    backend: BackendName
    phase: Phase
    message: str = ""
    namespace: str | None = None
    created: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    exit_code: int | None = None
    reason: str | None = Field(default=None, description="why it failed or restarts, e.g. OOMKilled")
    attempts: int = Field(default=1, description="local: how many times the job was (re)started")
    checkpoint_uri: str | None = None
    replicas: dict[str, dict[str, int]] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"


class JobBackend(ABC):
    """submit / status / wait / logs / cancel / list for one kind of job runner."""

    name: BackendName

    @abstractmethod
    def submit(self, job: ResolvedJob) -> JobStatus:
        """Start `job`. A job of that name that finished successfully is refused (a run is never overwritten);
        one that failed or was cancelled is started again and continues from its last checkpoint."""

    @abstractmethod
    def status(self, name: str) -> JobStatus: ...

    @abstractmethod
    def logs(self, name: str, replica: str = "master", index: int = 0, follow: bool = False) -> Iterator[str]:
        """Lines of one replica's log (the master is rank 0); with `follow`, until the replica ends."""

    @abstractmethod
    def cancel(self, name: str) -> JobStatus:
        """Stop every process of the job. Published checkpoints stay; half-written ones never become visible."""

    @abstractmethod
    def list(self) -> list[JobStatus]: ...

    def wait(self, name: str, timeout: float | None = None, poll: float = 2.0) -> JobStatus:
        """Poll until the job ends; `JobError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(name)
            if st.done:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"job {name} did not finish within {timeout:g} s (phase {st.phase})")
            time.sleep(poll)
