"""A local HTTP endpoint that answers like the Kubernetes API server for the resources FIRM's launcher uses.

No real API server can run on the project's CI machines, so `PyTorchJobBackend` is tested here at the HTTP
boundary: the real kubeflow-training `TrainingClient` and kubernetes client talk to this server through a real
kubeconfig. It serves

- `kubeflow.org/v1` `pytorchjobs` in a namespace: create (201; 409 when the name exists; 422 when the object fails
  the CRD schema; 403 in namespaces listed as forbidden; 404 in unknown namespaces), get, list, delete;
- `v1` `pods` (list by label selector) and `pods/<name>/log` (plain and `follow=true`);
- `apps/v1` `deployments/<name>` get and patch (a patch of the pod template starts a rollout that completes over the
  next reads, or never when `stuck_rollouts` names the Deployment; `on_patch(namespace, name, deployment)` is
  called with the patched Deployment before the answer — what a test's kubelet stand-in starts or stops);
- any object put into `objects` by its API path (CRDs, namespaces, ConfigMaps, Secrets, ServiceAccounts, pods,
  Argo Workflows, ...) is served on GET, `nodes` as the node list, and `SubjectAccessReview`s are answered from
  `grants` (`healthy_cluster` fills all of them as `firmctl cluster doctor` expects a ready cluster);
- `pod_statuses` (pod name → status fields) are merged into the job pods' status (e.g. an OOM-killed container).

Each job follows a scripted life, fixed when it is created: every GET of it moves it one step along its script
(default Created → Running → Succeeded), creating its pods (with the Training Operator's labels) once it runs. This checks our calls and our
handling of API answers; it does not emulate the operator.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
DEPLOYMENT = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)$")


_NAMED = re.compile(  # single objects served from `objects`; absent → 404
    r"^/api/v1/namespaces/[^/]+/(configmaps|secrets|serviceaccounts|pods)/[^/]+$|^/api/v1/(namespaces)/[^/]+$"
    r"|^/apis/apiextensions\.k8s\.io/v1/(customresourcedefinitions)/[^/]+$"
    r"|^/apis/argoproj\.io/v1alpha1/namespaces/[^/]+/(workflows)/[^/]+$"
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}  # fmt: skip


class FakeKubeAPI:
    """State of the fake API server; tests script it and read `requests` afterwards."""

    def __init__(self, namespaces: tuple[str, ...] = ("firm",), validate: Any = None) -> None:
        self.namespaces = set(namespaces)
        self.forbidden: set[str] = set()
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.scripts: dict[str, list[str]] = {}
        self.default_script = ["Created", "Running", "Succeeded"]
        self.pod_logs: dict[str, str] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.validate = validate  # callable(obj) raising on an invalid PyTorchJob
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.stuck_rollouts: set[str] = set()
        self.on_patch: Any = None  # callable(namespace, name, deployment) after each Deployment patch
        self.objects: dict[str, dict[str, Any]] = {}
        self.nodes: list[dict[str, Any]] = []
        # (user, api group, resource[/subresource], verb, namespace) the authorizer allows
        self.grants: set[tuple[str, str, str, str, str]] = set()
        self.pod_statuses: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ life of a job
    def _advance(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        script = job["_script"]
        step = job["_step"] = min(job["_step"] + 1, len(script) - 1)
        phase = script[step]
        conds = [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated",
                  "message": f"PyTorchJob {name} is created.", "lastTransitionTime": _now()}]  # fmt: skip
        replicas = {rt: spec.get("replicas", 1) for rt, spec in job["spec"]["pytorchReplicaSpecs"].items()}
        rstatus: dict[str, dict[str, int]] = {rt: {} for rt in replicas}
        if phase in ("Running", "Restarting", "Succeeded", "Failed"):
            conds.append({"type": "Running", "status": "True" if phase in ("Running", "Restarting") else "False",
                          "reason": "PyTorchJobRunning", "message": f"PyTorchJob {name} is running.",
                          "lastTransitionTime": _now()})  # fmt: skip
            job["status"]["startTime"] = job["status"].get("startTime") or _now()
            rstatus = {rt: {"active": n} for rt, n in replicas.items()}
        if phase == "Restarting":
            conds.append({"type": "Restarting", "status": "True", "reason": "PyTorchJobRestarting",
                          "message": "pod master-0 exited with code 137, restarting"})  # fmt: skip
        if phase == "Succeeded":
            conds.append({"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded",
                          "message": f"PyTorchJob {name} successfully completed."})  # fmt: skip
            job["status"]["completionTime"] = _now()
            rstatus = {rt: {"succeeded": n} for rt, n in replicas.items()}
        if phase == "Failed":
            conds.append({"type": "Failed", "status": "True", "reason": "PyTorchJobFailed",
                          "message": f"PyTorchJob {name} is failed because 1 Master replica(s) failed."})  # fmt: skip
            rstatus = {rt: {"failed": n} for rt, n in replicas.items()}
        job["status"]["conditions"] = conds
        job["status"]["replicaStatuses"] = rstatus

    def pods(self, ns: str) -> list[dict[str, Any]]:
        out = []
        for (jns, name), job in self.jobs.items():
            if jns != ns or job["_step"] < 1:
                continue
            for rtype, spec in job["spec"]["pytorchReplicaSpecs"].items():
                for i in range(spec.get("replicas", 1)):
                    labels = {
                        "training.kubeflow.org/job-name": name,
                        "training.kubeflow.org/replica-type": rtype.lower(),
                        "training.kubeflow.org/replica-index": str(i),
                        "training.kubeflow.org/operator-name": "pytorchjob-controller",
                    }
                    if rtype == "Master":
                        labels["training.kubeflow.org/job-role"] = "master"
                    out.append({"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": f"{name}-{rtype.lower()}-{i}", "namespace": ns,
                                             "labels": labels, "creationTimestamp": _now()},
                                "status": {"phase": "Running",
                                           **self.pod_statuses.get(f"{name}-{rtype.lower()}-{i}", {})}})  # fmt: skip
        return out

    # ------------------------------------------------------------------ request handling
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path, body))
            if method == "GET" and path in self.objects:
                return 200, self.objects[path]
            if method == "GET" and path == "/api/v1/nodes":
                return 200, {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": self.nodes}
            if method == "POST" and path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
                spec = body["spec"]
                ra = spec.get("resourceAttributes") or {}
                res = ra.get("resource", "") + (f"/{ra['subresource']}" if ra.get("subresource") else "")
                key = (
                    spec.get("user", ""),
                    ra.get("group", ""),
                    res,
                    ra.get("verb", ""),
                    ra.get("namespace", ""),
                )
                return 201, {**body, "status": {"allowed": key in self.grants}}
            m = _NAMED.match(path)
            if method == "GET" and m:
                kind = next(g for g in m.groups() if g)
                return 404, _status(404, "NotFound", f'{kind} "{path.rsplit("/", 1)[-1]}" not found')
            m = JOBS.match(path)
            if m:
                return self._jobs(method, m.group(1), m.group(2), body)
            m = PODS.match(path)
            if m and method == "GET":
                ns = m.group(1)
                if ns in self.forbidden:
                    return 403, _status(
                        403, "Forbidden", f'pods is forbidden: cannot list resource "pods" in "{ns}"'
                    )
                selector = dict(
                    kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if kv
                )
                items = [
                    p
                    for p in self.pods(ns)
                    if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())
                ]
                return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
            m = DEPLOYMENT.match(path)
            if m:
                return self._deployment(method, m.group(1), m.group(2), body)
            m = POD_LOG.match(path)
            if m and method == "GET":
                pod = m.group(2)
                if not any(p["metadata"]["name"] == pod for p in self.pods(m.group(1))):
                    return 404, _status(404, "NotFound", f'pods "{pod}" not found')
                return 200, self.pod_logs.get(pod, f"log of {pod}\n")
            return 404, _status(404, "NotFound", f"the server could not find the requested resource ({path})")

    def _jobs(self, method: str, ns: str, name: str | None, body: Any) -> tuple[int, Any]:
        if ns in self.forbidden:
            verb = {"POST": "create", "GET": "get", "DELETE": "delete"}.get(method, method.lower())
            return 403, _status(403, "Forbidden", f'pytorchjobs.kubeflow.org is forbidden: User "system:serviceaccount:'
                                f'{ns}:default" cannot {verb} resource "pytorchjobs" in namespace "{ns}"')  # fmt: skip
        if ns not in self.namespaces:
            return 404, _status(404, "NotFound", f'namespaces "{ns}" not found')
        if method == "POST" and name is None:
            jname = body["metadata"]["name"]
            if (ns, jname) in self.jobs:
                return 409, _status(
                    409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{jname}" already exists'
                )
            if self.validate is not None:
                try:
                    self.validate(body)
                except Exception as exc:
                    msg = " ".join(str(exc).split())[:300]
                    return 422, _status(
                        422, "Invalid", f'PyTorchJob.kubeflow.org "{jname}" is invalid: {msg}'
                    )
            job = json.loads(json.dumps(body))
            job["metadata"].update({"namespace": ns, "uid": f"uid-{jname}", "creationTimestamp": _now()})
            job["status"] = {}
            job["_step"] = -1
            job["_script"] = list(self.scripts.get(jname, self.default_script))  # fixed at creation
            self._advance(job)
            self.jobs[(ns, jname)] = job
            return 201, self._public(job)
        if method == "GET" and name is None:
            items = [self._public(j) for (jns, _), j in self.jobs.items() if jns == ns]
            return 200, {
                "apiVersion": "kubeflow.org/v1",
                "kind": "PyTorchJobList",
                "metadata": {},
                "items": items,
            }
        job = self.jobs.get((ns, name or ""))
        if job is None:
            return 404, _status(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found')
        if method == "GET":
            self._advance(job)
            return 200, self._public(job)
        if method == "DELETE":
            del self.jobs[(ns, name)]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
        return 405, _status(405, "MethodNotAllowed", method)

    def add_deployment(self, ns: str, name: str, replicas: int = 2) -> None:
        """A Deployment as the Helm chart creates it, fully rolled out."""
        self.deployments[(ns, name)] = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}, "annotations": {}},
                                  "spec": {"containers": [{"name": "triton", "image": "triton:1"}]}}},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "readyReplicas": replicas, "availableReplicas": replicas},
        }  # fmt: skip

    def _deployment(self, method: str, ns: str, name: str, body: Any) -> tuple[int, Any]:
        if ns in self.forbidden:
            return 403, _status(403, "Forbidden", f'deployments.apps "{name}" is forbidden')
        dep = self.deployments.get((ns, name))
        if dep is None:
            return 404, _status(404, "NotFound", f'deployments.apps "{name}" not found')
        if method == "PATCH":

            def merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
                for k, v in src.items():
                    if isinstance(v, dict) and isinstance(dst.get(k), dict):
                        merge(dst[k], v)
                    else:
                        dst[k] = v

            merge(dep, body)
            dep["metadata"]["generation"] += 1
            dep["status"]["updatedReplicas"] = 0  # the rollout starts
            dep["_reads"] = 0
            if self.on_patch is not None:
                self.on_patch(ns, name, dep)
            return 200, dep
        if method == "GET":
            reads = dep["_reads"] = dep.get("_reads", 0) + 1
            n = dep["spec"]["replicas"]
            if reads >= 2 and name not in self.stuck_rollouts:
                dep["status"].update({"observedGeneration": dep["metadata"]["generation"], "updatedReplicas": n,
                                      "readyReplicas": n, "availableReplicas": n, "replicas": n})  # fmt: skip
            return 200, {k: v for k, v in dep.items() if not k.startswith("_")}
        return 405, _status(405, "MethodNotAllowed", method)

    @staticmethod
    def _public(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if not k.startswith("_")}


def _handler(api: FakeKubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _do(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            code, payload = api.handle(self.command, url.path, parse_qs(url.query), body)
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _do

    return Handler


@contextmanager
def serve(api: FakeKubeAPI) -> Iterator[str]:
    """Run `api` on 127.0.0.1 (free port); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_kubeconfig(path: Path, server: str, namespace: str = "firm") -> Path:
    """A kubeconfig whose only cluster is `server` (token auth, as a service account or OIDC user would have)."""
    import yaml

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [
            {"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}
        ],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------ a cluster ready for FIRM (firmctl cluster doctor)
CRD_NAMES = ("pytorchjobs.kubeflow.org", "trainjobs.trainer.kubeflow.org", "workflows.argoproj.io")


def _meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, **({"namespace": namespace} if namespace else {}), **extra}


def add_crd(api: FakeKubeAPI, name: str) -> None:
    plural, group = name.split(".", 1)
    api.objects[f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"] = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": _meta(name),
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": plural, "kind": plural.rstrip("s").capitalize()},
                 "versions": [{"name": "v1", "served": True, "storage": True}]},
    }  # fmt: skip


def add_object(api: FakeKubeAPI, kind: str, namespace: str, name: str, **fields: Any) -> None:
    """A namespaced core object (configmaps, secrets, serviceaccounts, pods) at its API path."""
    kinds = {
        "configmaps": "ConfigMap",
        "secrets": "Secret",
        "serviceaccounts": "ServiceAccount",
        "pods": "Pod",
    }
    api.objects[f"/api/v1/namespaces/{namespace}/{kind}/{name}"] = {
        "apiVersion": "v1", "kind": kinds[kind], "metadata": _meta(name, namespace, **fields.pop("metadata", {})),
        **fields,
    }  # fmt: skip


def add_namespace(api: FakeKubeAPI, name: str, labels: dict[str, str] | None = None) -> None:
    api.namespaces.add(name)
    api.objects[f"/api/v1/namespaces/{name}"] = {
        "apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, labels=labels or {}),
    }  # fmt: skip


def grant_pipeline_permissions(
    api: FakeKubeAPI, namespace: str, pipeline_namespace: str | None = None
) -> None:
    from firm.config import get_settings
    from firm.launch.doctor import PIPELINE_PERMISSIONS

    pns = pipeline_namespace or namespace
    user = f"system:serviceaccount:{pns}:{get_settings().cluster.pipeline_service_account}"
    for p in PIPELINE_PERMISSIONS:
        res = p.resource + (f"/{p.subresource}" if p.subresource else "")
        for verb in p.verbs:
            api.grants.add((user, p.group, res, verb, namespace if p.where == "jobs" else pns))


def healthy_cluster(api: FakeKubeAPI, namespace: str = "firm", kfp_version: str = "2.15.0") -> None:
    """Everything `firmctl cluster doctor` checks, present and allowed, for the default cluster settings."""
    from firm.config import get_settings

    cluster = get_settings().cluster
    for crd in CRD_NAMES:
        add_crd(api, crd)
    add_namespace(api, namespace, {"istio-injection": "enabled"})
    add_namespace(api, "kubeflow")
    add_object(api, "configmaps", "kubeflow", "pipeline-install-config", data={"appVersion": kfp_version})
    add_object(api, "configmaps", namespace, cluster.settings_configmap, data={})
    add_object(api, "configmaps", namespace, "kfp-launcher", data={})
    add_object(api, "secrets", namespace, "mlpipeline-minio-artifact", data={})
    for ref in (cluster.object_store_secret, cluster.hf_token_secret):
        if ref is not None:
            add_object(api, "secrets", namespace, ref.name, data={})
    for sa in (cluster.service_account, cluster.pipeline_service_account):
        if sa:
            add_object(api, "serviceaccounts", namespace, sa)
    grant_pipeline_permissions(api, namespace)
    api.nodes = [
        {"apiVersion": "v1", "kind": "Node", "metadata": _meta("cpu-0", labels={"kubernetes.io/os": "linux"}),
         "status": {"allocatable": {"cpu": "16", "memory": "64Gi"}}},
        {"apiVersion": "v1", "kind": "Node",
         "metadata": _meta("gpu-0", labels={"nvidia.com/gpu.present": "true",
                                            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
         "status": {"allocatable": {"cpu": "192", "memory": "1800Gi", "nvidia.com/gpu": "8"}}},
    ]  # fmt: skip
