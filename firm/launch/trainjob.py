"""`TrainJobBackend`: run a job spec as a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1).

The TrainJob is built from the `kubeflow-trainer-api` models (`firm.launch.trainjob_render`) and created, read,
listed and deleted with the kubernetes client's `CustomObjectsApi`; pod logs come from `CoreV1Api`. FIRM does not
use the `kubeflow` SDK's `TrainerClient`: that SDK installs its own `kubeflow/__init__.py` over the one of
kubeflow-training (which the PyTorchJob backend needs), so the two cannot share an environment; the models-only
`kubeflow-trainer-api` package installs beside it (`kubeflow_trainer_api`). Configuration and namespace as for the
PyTorchJob backend: in-cluster service account in a pod, else the kubeconfig; `FIRM_NAMESPACE`.

Phases from the TrainJob's conditions (kubeflow/trainer v2.3.0, pkg/apis/trainer/v1alpha1/trainjob_types.go:
`Complete`, `Failed`, `Suspended`; there is no `Running` condition): Complete → Succeeded, Failed → Failed (its
reason, e.g. `DeadlineExceeded`, in the message), Suspended → Pending ("suspended"), otherwise Running while a child
Job of the JobSet is active (`status.jobsStatus`), else Pending. Pods are found by the JobSet's labels (the JobSet is
named after the TrainJob): `jobset.sigs.k8s.io/jobset-name`, `jobset.sigs.k8s.io/replicatedjob-name=node`, and the
node index `batch.kubernetes.io/job-completion-index`. API answers become the same one-line `JobError`s as for
PyTorchJobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from firm.launch.backend import JobBackend, JobError, JobNotFound, JobStatus
from firm.launch.cluster_jobs import pod_log_lines, replace_failed
from firm.launch.pytorchjob import alarm_stopped
from firm.launch.spec import ResolvedJob
from firm.launch.torchrun_quiet import OOM_EXIT_CODE, OOM_MESSAGE
from firm.launch.trainjob_render import DEFAULT_RUNTIME, GROUP, NODE, PLURAL, VERSION, build_trainjob

JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB = "jobset.sigs.k8s.io/replicatedjob-name"
NODE_INDEX = "batch.kubernetes.io/job-completion-index"


def _api_status(exc: BaseException) -> tuple[int | None, str]:
    """(HTTP status, the API server's message) of a failed call, if it got an answer."""
    from kubernetes.client.exceptions import ApiException

    if not isinstance(exc, ApiException):
        return None, ""
    message = exc.reason or ""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(exc.body or "{}").get("message") or message
    return exc.status, " ".join(str(message).split())


class TrainJobBackend(JobBackend):
    name = "trainjob"

    def __init__(
        self, namespace: str | None = None, config_file: str | None = None, runtime: str | None = None
    ) -> None:
        from firm.config import get_settings

        settings = get_settings()
        self.namespace = namespace or settings.namespace
        self.runtime = runtime or getattr(settings.cluster, "trainjob_runtime", None) or DEFAULT_RUNTIME
        self._config_file = config_file or os.environ.get("KUBECONFIG") or None
        self._api_client: Any = None

    # ------------------------------------------------------------------------------------------- plumbing

    @property
    def api_client(self) -> Any:
        if self._api_client is None:
            from kubernetes import client, config

            try:
                if os.environ.get("KUBERNETES_SERVICE_HOST") and not self._config_file:
                    cfg = client.Configuration()
                    config.load_incluster_config(client_configuration=cfg)
                    self._api_client = client.ApiClient(cfg)
                else:
                    self._api_client = config.new_client_from_config(config_file=self._config_file)
            except Exception as exc:  # ConfigException: a missing/garbled kubeconfig
                raise JobError(
                    "no usable Kubernetes configuration: set KUBECONFIG to a kubeconfig file (or create "
                    f"~/.kube/config), or run inside a cluster with a service account ({' '.join(str(exc).split())})"
                ) from None
        return self._api_client

    @property
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    @property
    def host(self) -> str:
        try:
            return str(self.api_client.configuration.host)
        except AttributeError:
            return "the Kubernetes API server"

    def _error(self, exc: BaseException, action: str, name: str | None = None) -> JobError:
        ns = self.namespace
        status, message = _api_status(exc)
        what = f"TrainJob {ns}/{name}" if name else f"TrainJobs in namespace {ns}"
        if status == 401:
            return JobError(
                f"{self.host} rejected the credentials of your kubeconfig while {action} {what} (401)"
            )
        if status == 403:
            return JobError(
                f"forbidden: you may not {action} {what} ({message or '403'}); check RBAC — the FIRM chart's "
                "launcher Role grants trainjobs create/get/list/watch/delete and pods, pods/log get/list/watch "
                "when cluster.jobBackend is trainjob"
            )
        if status == 404:
            if action == "create":
                return JobError(
                    f"cannot create {what}: namespace {ns!r} does not exist or the TrainJob resource "
                    f"({GROUP}/{VERSION}) is not installed — is Kubeflow Trainer v2 installed? "
                    "('firmctl cluster doctor' says which training operator the cluster has)"
                )
            return JobNotFound(f"no TrainJob named {name!r} in namespace {ns!r}")
        if status == 422:
            return JobError(f"the API server rejected {what}: {message}")
        if status is not None:
            return JobError(f"Kubernetes API error {status} while trying to {action} {what}: {message}")
        reason = " ".join(str(exc).split())[:200]
        return JobError(
            f"cannot reach the Kubernetes API server at {self.host} to {action} {what}: {reason} — check "
            "KUBECONFIG, that the cluster is up, and the network path to it"
        )

    def _get(self, name: str) -> dict[str, Any]:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except Exception as exc:
            raise self._error(exc, "get", name) from None

    # ------------------------------------------------------------------------------------------- status

    def _to_status(self, obj: dict[str, Any]) -> JobStatus:
        meta, st = obj.get("metadata") or {}, obj.get("status") or {}
        true = {c.get("type"): c for c in st.get("conditions") or [] if str(c.get("status")) == "True"}
        active = sum(int(j.get("active") or 0) for j in st.get("jobsStatus") or [])
        finished = None
        if "Complete" in true:
            phase, cond = "Succeeded", true["Complete"]
            finished = cond.get("lastTransitionTime")
        elif "Failed" in true:
            phase, cond = "Failed", true["Failed"]
            finished = cond.get("lastTransitionTime")
        elif "Suspended" in true:
            phase, cond = "Pending", true["Suspended"]
        else:
            phase, cond = ("Running" if active else "Pending"), {}
        message = cond.get("message") or ("suspended" if "Suspended" in true else "")
        reason = cond.get("reason") if phase == "Failed" else None
        replicas = {
            str(j.get("name")): {k: int(j.get(k) or 0) for k in ("active", "ready", "succeeded", "failed")}
            for j in st.get("jobsStatus") or []
        }
        annotations = meta.get("annotations") or {}
        return JobStatus(
            name=meta.get("name", ""),
            backend="trainjob",
            phase=phase,
            message=" ".join(str(message).split()),
            namespace=meta.get("namespace") or self.namespace,
            created=meta.get("creationTimestamp"),
            finished=finished,
            reason=reason,
            checkpoint_uri=annotations.get("firm.dev/checkpoint-uri"),
            replicas=replicas,
        )

    def status(self, name: str) -> JobStatus:
        st = self._to_status(self._get(name))
        if st.phase == "Failed":
            try:
                pods = self._pods(name)
            except JobError:  # the status is still right without the cause
                pods = []
            oom = self._oom_killed(pods)
            if oom is not None:
                st = st.model_copy(update={"reason": "OOMKilled", "message": oom})
            else:
                alarm = alarm_stopped(pods, NODE)
                if alarm is not None:
                    st = st.model_copy(update=alarm)
        return st

    def _pods(self, name: str, index: int | None = None) -> list[Any]:
        selector = f"{JOBSET_NAME}={name},{REPLICATED_JOB}={NODE}"
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        except Exception as exc:
            raise self._error(exc, "list pods of", name) from None
        if index is None:
            return list(pods)
        return [
            p
            for p in pods
            if ((p.metadata.labels or {}).get(NODE_INDEX) or (p.metadata.annotations or {}).get(NODE_INDEX))
            == str(index)
        ]

    def _oom_killed(self, pods: list[Any]) -> str | None:
        """ "out of memory: raise resources.memory (...)" when a node pod was OOM-killed (the kubelet's `OOMKilled`,
        or `torchrun_quiet`'s report of a worker's OOM kill)."""
        for pod in pods:
            for cs in (getattr(pod.status, "container_statuses", None) or []) if pod.status else []:
                if cs.name != NODE:
                    continue
                for state in (cs.state, cs.last_state):
                    term = getattr(state, "terminated", None) if state else None
                    if term is not None and (
                        term.reason == "OOMKilled"
                        or (term.exit_code == OOM_EXIT_CODE and OOM_MESSAGE in (term.message or ""))
                    ):
                        return f"{OOM_MESSAGE} (pod {pod.metadata.name} was OOM-killed)"
        return None

    def list(self) -> list[JobStatus]:
        try:
            out = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        except Exception as exc:
            raise self._error(exc, "list") from None
        return [self._to_status(j) for j in out.get("items") or []]

    # ------------------------------------------------------------------------------------------- submit

    def submit(self, job: ResolvedJob) -> JobStatus:
        if job.backend == "local":
            raise JobError(f"job {job.name} was resolved for the local backend, not trainjob")
        if job.upload is not None:  # a recipe file that is not in the image travels through the object store
            from pathlib import Path

            from firm.storage import write_bytes

            local, uri = job.upload
            write_bytes(uri, Path(local).read_bytes())
        body = build_trainjob(job, self.namespace, self.runtime).to_dict()
        if self._create(body, job.name) == 409:  # the name is taken
            self._replace_failed(job.name)
            self._create(body, job.name, conflict_ok=False)
        return self.status(job.name)

    def _create(self, body: dict[str, Any], name: str, conflict_ok: bool = True) -> int:
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        except Exception as exc:
            if conflict_ok and _api_status(exc)[0] == 409:
                return 409
            raise self._error(exc, "create", name) from None
        return 201

    def _replace_failed(self, name: str) -> None:
        """A job of this name exists: refuse unless it failed, in which case delete it so it can run again."""
        ns = self.namespace
        replace_failed(
            "TrainJob", ns, name, self.status(name).phase, delete=lambda: self._delete(name),
            get=lambda: self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name),
            gone=lambda exc: _api_status(exc)[0] == 404, error=lambda exc: self._error(exc, "get", name),
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------- cancel

    def _delete(self, name: str) -> None:
        from kubernetes.client import V1DeleteOptions

        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name,
                body=V1DeleteOptions(propagation_policy="Foreground"),
            )  # fmt: skip
        except Exception as exc:
            raise self._error(exc, "delete", name) from None

    def cancel(self, name: str) -> JobStatus:
        st = self.status(name)
        self._delete(name)
        return st.model_copy(update={"phase": "Cancelled", "message": "deleted: its pods are stopped"})

    # ------------------------------------------------------------------------------------------- logs

    def logs(self, name: str, replica: str = "master", index: int = 0, follow: bool = False) -> Iterator[str]:
        """Node `index`'s log (node 0 runs rank 0); `replica` master (= node 0) or worker/node (node `index`)."""
        replica = replica.lower()
        if replica not in ("master", "worker", "node"):
            raise JobError(f"replica must be master, worker or node, got {replica!r}")
        node = 0 if replica == "master" else index
        pods = self._pods(name, node)
        if not pods and not follow:
            st = self.status(name)
            raise JobError(
                f"job {name} has no pod for node {node} (phase {st.phase}); it may not be scheduled yet"
            )
        return self._stream(name, node, pods[0] if pods else None, follow)

    def _stream(self, name: str, node: int, pod: Any, follow: bool) -> Iterator[str]:
        while pod is None or (follow and getattr(pod.status, "phase", None) == "Pending"):
            if self.status(name).done:
                if pod is None:
                    return
                break
            time.sleep(2.0)
            pod = next(iter(self._pods(name, node)), pod)
        try:
            yield from pod_log_lines(self.core, pod.metadata.name, self.namespace, NODE, follow)
        except JobError:
            raise
        except Exception as exc:
            raise self._error(exc, "read the logs of", name) from None
