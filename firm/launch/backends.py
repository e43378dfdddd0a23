"""The job backends by name: `get_backend` picks `LocalBackend`, `PyTorchJobBackend` or `TrainJobBackend`
(`firm.launch.backend` is the interface they implement). The implementation is imported only when chosen: the
cluster ones need the Kubernetes client, which a local run never loads.

`auto` asks the API server's discovery endpoints which training operator the cluster serves (Kubeflow Trainer v2's
`trainjobs` in trainer.kubeflow.org/v1alpha1, the Training Operator's `pytorchjobs` in kubeflow.org/v1) and prefers
Trainer v2, which current Kubeflow releases ship. Discovery is open to every authenticated account (Kubernetes'
default `system:discovery` ClusterRole), so a pipeline step needs no extra permission to read it."""

from __future__ import annotations

from typing import Literal

from firm.launch.backend import BackendName, JobBackend, JobError

BackendChoice = Literal["local", "pytorchjob", "trainjob", "auto"]
# backend → (discovery path of its API group version, the resource it creates)
APIS: dict[str, tuple[str, str]] = {
    "trainjob": ("/apis/trainer.kubeflow.org/v1alpha1", "trainjobs"),
    "pytorchjob": ("/apis/kubeflow.org/v1", "pytorchjobs"),
}


def installed_backends(config_file: str | None = None) -> list[BackendName]:
    """The cluster backends the API server serves, TrainJob first (an unreachable server is a `JobError`)."""
    import os

    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not (config_file or os.environ.get("KUBECONFIG")):
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            api = client.ApiClient(cfg)
        else:
            api = config.new_client_from_config(config_file=config_file or os.environ.get("KUBECONFIG"))
    except Exception as exc:
        raise JobError(f"no usable Kubernetes configuration to detect the job backend ({exc})") from None
    found: list[BackendName] = []
    for name, (path, resource) in APIS.items():
        try:
            listing = api.call_api(path, "GET", response_type="object", auth_settings=["BearerToken"],
                                   _return_http_data_only=True)  # fmt: skip
        except client.exceptions.ApiException as exc:
            if exc.status == 404:  # the group version is not served
                continue
            raise JobError(
                f"cannot read {path} to detect the job backend ({exc.status} {exc.reason}); set "
                "cluster.job_backend (FIRM_CLUSTER__JOB_BACKEND) to pytorchjob or trainjob"
            ) from None
        except Exception as exc:
            raise JobError(
                f"cannot reach the Kubernetes API server to detect the job backend: {exc}"
            ) from None
        if any(r.get("name") == resource for r in (listing or {}).get("resources") or []):
            found.append(name)  # type: ignore[arg-type]
    return found


def resolve_backend_name(name: BackendChoice | None = None) -> BackendName:
    """`name` (default: the cluster settings' `job_backend`), with `auto` replaced by what the cluster has."""
    from firm.config import get_settings

    name = name or get_settings().cluster.job_backend
    if name not in ("local", "pytorchjob", "trainjob", "auto"):
        raise JobError(f"unknown job backend {name!r}; expected local, pytorchjob, trainjob or auto")
    if name != "auto":
        return name  # type: ignore[return-value]
    found = installed_backends()
    if not found:
        raise JobError(
            "job backend auto: the cluster has neither Kubeflow Trainer v2 (trainjobs.trainer.kubeflow.org) nor "
            "the Training Operator (pytorchjobs.kubeflow.org) installed; 'firmctl cluster doctor' shows what it has"
        )
    return found[0]


def get_backend(name: BackendChoice | None = None, namespace: str | None = None) -> JobBackend:
    """The backend called `name` (default: the cluster settings' `job_backend`); `namespace` for cluster jobs."""
    resolved = resolve_backend_name(name)
    if resolved == "local":
        from firm.launch.local_backend import LocalBackend

        return LocalBackend()
    if resolved == "pytorchjob":
        from firm.launch.pytorchjob import PyTorchJobBackend

        return PyTorchJobBackend(namespace=namespace)
    from firm.launch.trainjob import TrainJobBackend

    return TrainJobBackend(namespace=namespace)
