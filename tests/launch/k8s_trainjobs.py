"""The fake Kubernetes API server (`tests.launch.k8s_api`) with Kubeflow Trainer v2's `trainjobs`.

`trainer.kubeflow.org/v1alpha1` `trainjobs` in a namespace: create (201; 409 when the name exists; 422 when the
object fails the CRD schema or names a runtime that is not installed; 403/404 as for PyTorchJobs), get, list, delete.
Each TrainJob follows a scripted life, fixed at creation and moved one step per GET, with the conditions and
`jobsStatus` Trainer v2.3 writes (kubeflow/trainer v2.3.0 pkg/apis/trainer/v1alpha1/trainjob_types.go): `created`
(no condition yet), `running` (the JobSet's `node` job active), `complete`, `failed`, `suspended`. Running jobs have
one pod per node labelled as a JobSet's pods are. This checks FIRM's calls and its reading of the answers; it does
not emulate Trainer.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.launch.k8s_api import FakeKubeAPI, _now, _status

TRAINJOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")


class FakeTrainerAPI(FakeKubeAPI):
    def __init__(self, runtimes: tuple[str, ...] = ("torch-distributed",), **kw: Any) -> None:
        super().__init__(**kw)
        self.runtimes = set(runtimes)
        self.trainjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.trainjob_scripts: dict[str, list[str]] = {}
        self.default_trainjob_script = ["created", "running", "complete"]
        self.validate_trainjob: Any = None

    # ------------------------------------------------------------------ life of a TrainJob
    def _advance_trainjob(self, job: dict[str, Any]) -> None:
        script = job["_script"]
        step = job["_step"] = min(job["_step"] + 1, len(script) - 1)
        phase = script[step]
        nodes = job["spec"]["trainer"].get("numNodes", 1)
        conds: list[dict[str, Any]] = []
        jobs_status = [{"name": "node", "active": 0, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}]
        if phase == "running":
            jobs_status[0].update(active=1, ready=1)
        if phase == "complete":
            jobs_status[0].update(succeeded=1)
            conds.append({"type": "Complete", "status": "True", "reason": "JobsCompleted",
                          "message": "jobset completed successfully", "lastTransitionTime": _now()})  # fmt: skip
        if phase == "failed":
            jobs_status[0].update(failed=1)
            conds.append({"type": "Failed", "status": "True", "reason": "FailedJobs",
                          "message": "jobset failed: job node-0 has failed (BackoffLimitExceeded)",
                          "lastTransitionTime": _now()})  # fmt: skip
        if phase == "suspended":
            jobs_status[0].update(suspended=1)
            conds.append({"type": "Suspended", "status": "True", "reason": "Suspended",
                          "message": "TrainJob is suspended", "lastTransitionTime": _now()})  # fmt: skip
        job["_nodes"] = nodes if phase in ("running", "complete", "failed") else 0
        job["status"] = {"conditions": conds, "jobsStatus": jobs_status}

    def pods(self, ns: str) -> list[dict[str, Any]]:
        out = super().pods(ns)
        for (jns, name), job in self.trainjobs.items():
            if jns != ns:
                continue
            for i in range(job.get("_nodes", 0)):
                pod = f"{name}-node-0-{i}"
                out.append({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": pod, "namespace": ns, "creationTimestamp": _now(),
                                         "labels": {"jobset.sigs.k8s.io/jobset-name": name,
                                                    "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                                    "batch.kubernetes.io/job-completion-index": str(i)}},
                            "status": {"phase": "Running", **self.pod_statuses.get(pod, {})}})  # fmt: skip
        return out

    # ------------------------------------------------------------------ requests
    def discovery(self, path: str) -> dict[str, Any] | None:
        """`/apis/<group>/<version>`: the resources of the CRDs added with `add_crd` (None: not served)."""
        group_version = path.removeprefix("/apis/")
        resources = []
        for key, crd in self.objects.items():
            if "/customresourcedefinitions/" not in key:
                continue
            spec = crd["spec"]
            if any(f"{spec['group']}/{v}" == group_version for v in self.served_versions(spec)):
                resources.append(
                    {"name": spec["names"]["plural"], "namespaced": True, "kind": spec["names"]["kind"]}
                )
        if not resources:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }

    @staticmethod
    def served_versions(spec: dict[str, Any]) -> list[str]:
        # the fake's CRDs list version v1; Trainer's group serves v1alpha1
        return (
            ["v1alpha1"] if spec["group"] == "trainer.kubeflow.org" else [v["name"] for v in spec["versions"]]
        )

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if method == "GET" and re.match(r"^/apis/[^/]+/[^/]+$", path):
            with self.lock:
                self.requests.append((method, path, body))
                listing = self.discovery(path)
            if listing is None:
                return 404, _status(404, "NotFound", "the server could not find the requested resource")
            return 200, listing
        m = TRAINJOBS.match(path)
        if not m:
            return super().handle(method, path, query, body)
        with self.lock:
            self.requests.append((method, path, body))
            return self._trainjobs(method, m.group(1), m.group(2), body)

    def _trainjobs(self, method: str, ns: str, name: str | None, body: Any) -> tuple[int, Any]:
        if ns in self.forbidden:
            verb = {"POST": "create", "GET": "get", "DELETE": "delete"}.get(method, method.lower())
            return 403, _status(403, "Forbidden", f'trainjobs.trainer.kubeflow.org is forbidden: User "system:'
                                f'serviceaccount:{ns}:default" cannot {verb} resource "trainjobs" in namespace "{ns}"')  # fmt: skip
        if ns not in self.namespaces:
            return 404, _status(404, "NotFound", f'namespaces "{ns}" not found')
        if method == "POST" and name is None:
            jname = body["metadata"]["name"]
            if (ns, jname) in self.trainjobs:
                return 409, _status(
                    409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{jname}" already exists'
                )
            runtime = body["spec"]["runtimeRef"]["name"]
            if runtime not in self.runtimes:  # Trainer's admission webhook checks the runtime reference
                return 422, _status(422, "Invalid", f'TrainJob.trainer.kubeflow.org "{jname}" is invalid: '
                                    f'spec.runtimeRef: Invalid value: "{runtime}": ClusterTrainingRuntime not found')  # fmt: skip
            if self.validate_trainjob is not None:
                try:
                    self.validate_trainjob(body)
                except Exception as exc:
                    msg = " ".join(str(exc).split())[:300]
                    return 422, _status(
                        422, "Invalid", f'TrainJob.trainer.kubeflow.org "{jname}" is invalid: {msg}'
                    )
            job = json.loads(json.dumps(body))
            job["metadata"].update({"namespace": ns, "uid": f"uid-{jname}", "creationTimestamp": _now()})
            job["_step"] = -1
            job["_script"] = list(self.trainjob_scripts.get(jname, self.default_trainjob_script))
            self._advance_trainjob(job)
            self.trainjobs[(ns, jname)] = job
            return 201, self._public(job)
        if method == "GET" and name is None:
            items = [self._public(j) for (jns, _), j in self.trainjobs.items() if jns == ns]
            return 200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList", "metadata": {},
                         "items": items}  # fmt: skip
        job = self.trainjobs.get((ns, name or ""))
        if job is None:
            return 404, _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
        if method == "GET":
            self._advance_trainjob(job)
            return 200, self._public(job)
        if method == "DELETE":
            del self.trainjobs[(ns, name)]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
        return 405, _status(405, "MethodNotAllowed", method)
