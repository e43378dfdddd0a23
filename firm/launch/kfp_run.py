"""Was this KFP step stopped because its run was terminated? (`run_terminated`), for the launcher step (`run_job`).

A launcher step's pod gets SIGTERM both when its run is terminated (the user's explicit "Terminate") and when the pod
is evicted, preempted or its node drained. Only the first may cancel the training job; otherwise the job keeps
running and the step, retried (KFP's run "Retry" re-runs the failed step in the same run, so with the same job
name), re-attaches to it.

How a termination is recognised — from the pod's own Argo Workflow (the pod label `workflows.argoproj.io/workflow`):
- KFP's `TerminateRun` patches the workflow's `spec.activeDeadlineSeconds` to 0 (kubeflow/pipelines
  backend/src/apiserver/resource/resource_manager.go `TerminateWorkflow`; `IsTerminating` in
  backend/src/common/util/workflow.go);
- `argo terminate` / `argo stop` set `spec.shutdown` to `Terminate` / `Stop`.

A KFP v2 step container has `KFP_POD_NAME` (kubeflow/pipelines backend/src/v2/compiler/argocompiler/common.go,
`commonEnvs`); outside a KFP pod (a `firmctl` command, a local pipeline run) a signal is the user's own stop.
Reading the pod and the workflow needs `get` on pods and on `workflows.argoproj.io` in the step's namespace (the
pipeline runner's Role grants both; `firmctl cluster doctor` checks it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# The oldest Kubeflow Pipelines backend that runs FIRM's compiled IR as written: the kfp-kubernetes platform spec
# fields the IR uses are honoured by the backend's driver (kubeflow/pipelines backend/src/v2/driver) from these
# releases on — emptyDir mounts (/dev/shm) 2.3.0 and `optional` Secret/ConfigMap env
# (the optional HF token Secret, the settings ConfigMap) 2.15.0; an older backend ignores `optional` and a step
# whose optional Secret is absent never starts.
MIN_KFP_VERSION = "2.15.0"
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def kfp_pod() -> tuple[str | None, str] | None:
    """(namespace, pod name) of the KFP step this process runs in, else None."""
    name = os.environ.get("KFP_POD_NAME")
    if not name:
        return None
    ns = os.environ.get("KFP_POD_NAMESPACE") or os.environ.get("POD_NAMESPACE")
    if not ns:
        try:
            ns = SA_NAMESPACE.read_text().strip() or None
        except OSError:
            ns = None
    return ns, name


def api_client() -> Any:
    """A kubernetes `ApiClient`: in-cluster when running in a pod with a token, else the kubeconfig."""
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)


def workflow_terminating(wf: dict[str, Any]) -> bool:
    spec = wf.get("spec") or {}
    return spec.get("activeDeadlineSeconds") == 0 or spec.get("shutdown") in ("Terminate", "Stop")


def run_terminated(namespace: str | None = None, api: Any = None) -> bool | None:
    """True when this step's run is being terminated, False when it is not, None when it cannot be told (not a
    KFP pod, or the pod/workflow could not be read)."""
    pod = kfp_pod()
    if pod is None:
        return None
    ns = pod[0] or namespace
    if ns is None:
        return None
    try:
        from kubernetes import client

        api = api or api_client()
        me = client.CoreV1Api(api).read_namespaced_pod(name=pod[1], namespace=ns)
        wf_name = (me.metadata.labels or {}).get(WORKFLOW_LABEL)
        if not wf_name:
            return None
        wf = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "argoproj.io", "v1alpha1", ns, "workflows", wf_name
        )
    except Exception:
        return None
    return workflow_terminating(wf)


def stop_cancels_job(namespace: str | None = None) -> tuple[bool, str]:
    """Whether a SIGTERM/SIGINT received now should cancel the job, and why."""
    if kfp_pod() is None:
        return True, "stopped by its user"
    terminated = run_terminated(namespace)
    if terminated:
        return True, "its pipeline run was terminated"
    if terminated is None:
        return False, "the step was stopped and its run's state could not be read (no termination seen)"
    return False, "the step was stopped (evicted or restarted) but its run was not terminated"
