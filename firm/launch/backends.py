"""The job backends by name: `get_backend` picks `LocalBackend` or `PyTorchJobBackend` (`firm.launch.backend` is the
interface both implement). The implementation is imported only when chosen: the PyTorchJob one needs the Kubernetes
client, which a local run never loads."""

from __future__ import annotations

from firm.launch.backend import BackendName, JobBackend, JobError


def get_backend(name: BackendName | None = None, namespace: str | None = None) -> JobBackend:
    """The backend called `name` (default: the cluster settings' `job_backend`); `namespace` for PyTorchJobs."""
    from firm.config import get_settings

    name = name or get_settings().cluster.job_backend
    if name == "local":
        from firm.launch.local_backend import LocalBackend

        return LocalBackend()
    if name == "pytorchjob":
        from firm.launch.pytorchjob import PyTorchJobBackend

        return PyTorchJobBackend(namespace=namespace)
    raise JobError(f"unknown job backend {name!r}; expected local or pytorchjob")
