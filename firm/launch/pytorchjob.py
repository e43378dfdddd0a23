"""`PyTorchJobBackend`: run a job spec as a Kubeflow Training Operator `PyTorchJob` (kubeflow.org/v1).

The job is built from the kubeflow-training SDK's models (`firm.launch.render`) and created, read, listed and
deleted through its `TrainingClient`; pod logs are read through the same client's `CoreV1Api`. The Kubernetes
configuration is the in-cluster service account when running in a pod (a KFP step), else the kubeconfig
(`KUBECONFIG` or `~/.kube/config`); the namespace is `FIRM_NAMESPACE` (settings `namespace`).

API answers become one-line `JobError`s that say what to check: 401/403 (credentials, RBAC), 404 (no such job; or,
on create, a missing namespace or Training Operator), 409 (a job of that name exists: a finished one is never
overwritten; a failed one is deleted and created again, continuing from its last checkpoint), 422 (the API server
rejected the object), and an unreachable server (naming its address).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from firm.launch.backend import JobBackend, JobError, JobNotFound, JobStatus
from firm.launch.cluster_jobs import pod_log_lines, replace_failed
from firm.launch.render import CONTAINER, build_pytorchjob
from firm.launch.spec import ResolvedJob
from firm.launch.torchrun_quiet import OOM_EXIT_CODE, OOM_MESSAGE

_PHASE_BY_CONDITION = {
    "Succeeded": "Succeeded",
    "Failed": "Failed",
    "Restarting": "Restarting",
    "Running": "Running",
    "Suspended": "Pending",
    "Created": "Pending",
}
_PRIORITY = ["Succeeded", "Failed", "Restarting", "Running", "Suspended", "Created"]


def alarm_stopped(pods: list[Any] | None, container: str) -> dict[str, Any] | None:
    """JobStatus fields (`reason: stopped_by_alarm`, exit code 4, the alarm line as the message) when `container`
    of one of `pods` terminated with `ALARM_EXIT_CODE`: a reward-hacking alarm stopped the RL run, and rank 0
    wrote `stopped_by_alarm: <alarm> at step N: <values>` to the termination log (`firm.rl.train`)."""
    from firm.rl.alarms import ALARM_EXIT_CODE, STOPPED_BY_ALARM

    for pod in pods or []:
        st = pod.status
        for cs in (getattr(st, "container_statuses", None) or []) if st else []:
            if cs.name != container:
                continue
            for state in (cs.state, cs.last_state):
                term = getattr(state, "terminated", None) if state else None
                if term is not None and term.exit_code == ALARM_EXIT_CODE:
                    message = " ".join((term.message or "").split()) or (
                        f"{STOPPED_BY_ALARM}: a reward-hacking alarm stopped the run (exit code "
                        f"{ALARM_EXIT_CODE}); its alarm line is in the log of pod {pod.metadata.name}"
                    )
                    return {"reason": STOPPED_BY_ALARM, "exit_code": ALARM_EXIT_CODE, "message": message}
    return None


def _root_cause(exc: BaseException) -> BaseException:
    """The exception TrainingClient wrapped (it re-raises API errors as RuntimeError/TimeoutError): the first
    `ApiException` down the chain, else the innermost exception."""
    from kubernetes.client.exceptions import ApiException

    seen, depth = exc, 0
    while not isinstance(seen, ApiException) and depth < 10:
        nxt = seen.__cause__ or seen.__context__
        if nxt is None:
            break
        seen, depth = nxt, depth + 1
    return seen


def _http_status(exc: BaseException) -> tuple[int | None, str]:
    """(HTTP status, the API server's message) of a failed call, if it got an answer."""
    from kubernetes.client.exceptions import ApiException

    cause = _root_cause(exc)
    if isinstance(cause, ApiException):
        message = cause.reason or ""
        try:
            body = json.loads(cause.body or "{}")
            message = body.get("message") or message
        except (ValueError, AttributeError):
            pass
        return cause.status, " ".join(str(message).split())
    m = re.search(r"\((\d{3})\)\s*Reason: ([^\n]*)", str(exc))
    if m:
        return int(m.group(1)), m.group(2).strip()
    return None, ""


class PyTorchJobBackend(JobBackend):
    name = "pytorchjob"

    def __init__(
        self, namespace: str | None = None, config_file: str | None = None, client: Any = None
    ) -> None:
        from firm.config import get_settings

        self.namespace = namespace or get_settings().namespace
        # read KUBECONFIG now: the kubernetes client reads it once, at import
        self._config_file = config_file or os.environ.get("KUBECONFIG") or None
        self._client = client

    # ------------------------------------------------------------------------------------------- plumbing

    @property
    def client(self) -> Any:
        if self._client is None:
            from kubeflow.training import TrainingClient

            try:
                self._client = TrainingClient(config_file=self._config_file, namespace=self.namespace)
            except Exception as exc:  # kubernetes.config.ConfigException, a missing/garbled kubeconfig
                raise JobError(
                    "no usable Kubernetes configuration: set KUBECONFIG to a kubeconfig file (or create "
                    f"~/.kube/config), or run inside a cluster with a service account ({' '.join(str(exc).split())})"
                ) from None
        return self._client

    @property
    def host(self) -> str:
        try:
            return str(self.client.custom_api.api_client.configuration.host)
        except AttributeError:
            return "the Kubernetes API server"

    def _error(self, exc: BaseException, action: str, name: str | None = None) -> JobError:
        ns = self.namespace
        status, message = _http_status(exc)
        what = f"PyTorchJob {ns}/{name}" if name else f"PyTorchJobs in namespace {ns}"
        if status == 401:
            return JobError(
                f"{self.host} rejected the credentials of your kubeconfig while {action} {what} (401)"
            )
        if status == 403:
            return JobError(
                f"forbidden: you may not {action} {what} ({message or '403'}); check RBAC — the FIRM chart's "
                "launcher Role grants pytorchjobs create/get/list/watch/delete and pods, pods/log get/list/watch"
            )
        if status == 404:
            if action == "create":
                return JobError(
                    f"cannot create {what}: namespace {ns!r} does not exist or the PyTorchJob resource "
                    "(kubeflow.org/v1) is not installed — is the Kubeflow Training Operator installed?"
                )
            return JobNotFound(f"no PyTorchJob named {name!r} in namespace {ns!r}")
        if status == 422:
            return JobError(f"the API server rejected {what}: {message}")
        if status is not None:
            return JobError(f"Kubernetes API error {status} while trying to {action} {what}: {message}")
        if isinstance(_root_cause(exc), TimeoutError) or isinstance(exc, TimeoutError):
            return JobError(
                f"the Kubernetes API server at {self.host} did not answer in time ({action} {what})"
            )
        reason = " ".join(str(_root_cause(exc)).split())[:200]
        return JobError(
            f"cannot reach the Kubernetes API server at {self.host} to {action} {what}: {reason} — check "
            "KUBECONFIG, that the cluster is up, and the network path to it"
        )

    # ------------------------------------------------------------------------------------------- status

    def _to_status(self, obj: Any) -> JobStatus:
        meta, st = obj.metadata, obj.status
        conditions = list(getattr(st, "conditions", None) or [])
        true = {c.type: c for c in conditions if str(c.status) == "True"}
        phase, message = "Pending", ""
        for kind in _PRIORITY:
            if kind in true:
                phase, message = _PHASE_BY_CONDITION[kind], true[kind].message or ""
                break
        replicas: dict[str, dict[str, int]] = {}
        for rtype, rs in (getattr(st, "replica_statuses", None) or {}).items():
            replicas[str(rtype).lower()] = {
                k: int(getattr(rs, k) or 0) for k in ("active", "succeeded", "failed") if hasattr(rs, k)
            }
        annotations = meta.annotations or {}
        return JobStatus(
            name=meta.name,
            backend="pytorchjob",
            phase=phase,
            message=" ".join(message.split()),
            namespace=meta.namespace or self.namespace,
            created=meta.creation_timestamp,
            started=getattr(st, "start_time", None),
            finished=getattr(st, "completion_time", None),
            checkpoint_uri=annotations.get("firm.dev/checkpoint-uri"),
            replicas=replicas,
        )

    def status(self, name: str) -> JobStatus:
        try:
            obj = self.client.get_job(name=name, namespace=self.namespace)
        except JobError:
            raise
        except Exception as exc:
            raise self._error(exc, "get", name) from None
        st = self._to_status(obj)
        if st.phase in ("Failed", "Restarting"):
            cause = self._failure_cause(name)
            if cause is not None:
                st = st.model_copy(update=cause)
        return st

    def _failure_cause(self, name: str) -> dict[str, Any] | None:
        """Why a pod of the job failed, as JobStatus fields: OOM (`_oom_killed`), else `stopped_by_alarm` when the
        container ended with `ALARM_EXIT_CODE` (a reward-hacking alarm stopped the RL run; its termination
        message holds the alarm line)."""
        try:
            pods = self.client.get_job_pods(name=name, namespace=self.namespace, is_master=False)
        except Exception:  # the status is still right without the cause
            return None
        oom = self._oom_killed(pods)
        if oom is not None:
            return {"reason": "OOMKilled", "message": oom}
        return alarm_stopped(pods, CONTAINER)

    def _oom_killed(self, pods: list[Any] | None) -> str | None:
        """ "out of memory: raise resources.memory (...)" when a pod of the job was OOM-killed: the container was
        killed by the kubelet/kernel (`reason: OOMKilled`, exit 137 — retryable for the ExitCode policy, bounded by
        `backoffLimit`), or torchrun_quiet reported a worker's OOM kill (`OOM_EXIT_CODE`, not retried)."""
        for pod in pods or []:
            st = pod.status
            for cs in (getattr(st, "container_statuses", None) or []) if st else []:
                if cs.name != CONTAINER:
                    continue
                for state in (cs.state, cs.last_state):
                    term = getattr(state, "terminated", None) if state else None
                    if term is None:
                        continue
                    if term.reason == "OOMKilled" or (
                        term.exit_code == OOM_EXIT_CODE and OOM_MESSAGE in (term.message or "")
                    ):
                        limit = next(
                            (
                                (c.resources.limits or {}).get("memory")
                                for c in (pod.spec.containers if pod.spec else [])
                                if c.name == CONTAINER and c.resources
                            ),
                            None,
                        )
                        at = f" at its {limit} memory limit" if limit else ""
                        return f"{OOM_MESSAGE} (pod {pod.metadata.name} was OOM-killed{at})"
        return None

    def list(self) -> list[JobStatus]:
        try:
            jobs = self.client.list_jobs(namespace=self.namespace)
        except JobError:
            raise
        except Exception as exc:
            raise self._error(exc, "list") from None
        return [self._to_status(j) for j in jobs]

    # ------------------------------------------------------------------------------------------- submit

    def submit(self, job: ResolvedJob) -> JobStatus:
        if job.backend != "pytorchjob":
            raise JobError(f"job {job.name} was resolved for the {job.backend} backend, not pytorchjob")
        if job.upload is not None:  # a recipe file that is not in the image travels through the object store
            from pathlib import Path

            from firm.storage import write_bytes

            local, uri = job.upload
            write_bytes(uri, Path(local).read_bytes())
        obj = build_pytorchjob(job, self.namespace)
        if self._create(obj, job.name) == 409:  # the name is taken
            self._replace_failed(job.name)
            self._create(obj, job.name, conflict_ok=False)
        return self.status(job.name)

    def _create(self, obj: Any, name: str, conflict_ok: bool = True) -> int:
        """Create the PyTorchJob; 201 → 201, 409 → 409 when `conflict_ok`, anything else → `JobError`."""
        try:
            self.client.create_job(job=obj, namespace=self.namespace)
        except JobError:
            raise
        except Exception as exc:
            if conflict_ok and _http_status(exc)[0] == 409:
                return 409
            raise self._error(exc, "create", name) from None
        return 201

    def _replace_failed(self, name: str) -> None:
        """A job of this name exists: refuse unless it failed, in which case delete it so it can run again."""
        ns = self.namespace
        replace_failed(
            "PyTorchJob", ns, name, self.status(name).phase, delete=lambda: self._delete(name),
            get=lambda: self.client.get_job(name=name, namespace=ns),
            gone=lambda exc: _http_status(exc)[0] == 404, error=lambda exc: self._error(exc, "get", name),
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------- cancel

    def _delete(self, name: str) -> None:
        from kubernetes.client import V1DeleteOptions

        try:
            self.client.delete_job(
                name=name,
                namespace=self.namespace,
                delete_options=V1DeleteOptions(propagation_policy="Foreground"),
            )
        except Exception as exc:
            raise self._error(exc, "delete", name) from None

    def cancel(self, name: str) -> JobStatus:
        st = self.status(name)
        self._delete(name)
        return st.model_copy(update={"phase": "Cancelled", "message": "deleted: its pods are stopped"})

    # ------------------------------------------------------------------------------------------- logs

    def _pod(self, name: str, replica: str, index: int) -> Any:
        replica = replica.lower()
        if replica not in ("master", "worker"):
            raise JobError(f"replica must be master or worker, got {replica!r}")
        try:
            pods = self.client.get_job_pods(
                name=name,
                namespace=self.namespace,
                is_master=False,
                replica_type=replica,
                replica_index=index,
            )
        except Exception as exc:
            raise self._error(exc, "list pods of", name) from None
        return pods[0] if pods else None

    def logs(self, name: str, replica: str = "master", index: int = 0, follow: bool = False) -> Iterator[str]:
        pod = self._pod(name, replica, index)
        if pod is None and not follow:
            st = self.status(name)
            raise JobError(
                f"job {name} has no {replica}-{index} pod (phase {st.phase}); it may not be scheduled yet"
            )
        return self._stream(name, replica, index, pod, follow)

    def _stream(self, name: str, replica: str, index: int, pod: Any, follow: bool) -> Iterator[str]:
        while pod is None or (follow and getattr(pod.status, "phase", None) == "Pending"):
            if self.status(name).done:
                if pod is None:
                    return
                break
            time.sleep(2.0)
            pod = self._pod(name, replica, index) or pod
        try:
            yield from pod_log_lines(
                self.client.core_api, pod.metadata.name, self.namespace, CONTAINER, follow
            )
        except JobError:
            raise
        except Exception as exc:
            raise self._error(exc, "read the logs of", name) from None
