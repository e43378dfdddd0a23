"""`cluster_doctor`: is this Kubernetes cluster ready for FIRM? (`firmctl cluster doctor` prints it.)

Each check is one row: ✓ (ok), ✗ (FIRM will fail: the row says how to fix it) or · (information: an optional
component, or something FIRM copes with). It reads, with the caller's kubeconfig (or in-cluster account):

- operators: the CRDs of the Kubeflow Training Operator v1 (`pytorchjobs.kubeflow.org`, what FIRM's launcher
  creates), Kubeflow Trainer v2 (`trainjobs.trainer.kubeflow.org`), Argo Workflows (KFP's engine), and the gang
  schedulers `runPolicy.schedulingPolicy` needs (Volcano, scheduler-plugins); which training backend the cluster
  supports (`pytorchjob`, `trainjob`); Kubeflow Pipelines and its version (the `appVersion` of its
  `pipeline-install-config` ConfigMap, else the API server Deployment's image tag) against `MIN_KFP_VERSION`;
- RBAC: one `SubjectAccessReview` per resource and verb FIRM's pipeline ServiceAccount needs (`PIPELINE_PERMISSIONS`),
  and that the pipeline and training ServiceAccounts exist;
- objects: the settings ConfigMap, the object-store / HF token / image pull Secrets in the namespace of the jobs and
  in the namespace of the pipeline steps (a pod can only use those of its own namespace), and KFP's `kfp-launcher`
  ConfigMap and `mlpipeline-minio-artifact` Secret where the steps run;
- Istio: the injection labels of those namespaces (FIRM's pods opt out of the sidecar);
- nodes: for each node pool, nodes carrying its selector labels and, for GPU pools, its GPU resource;
- network: the object store and the reward service (Triton gRPC) accept a TCP connection from here.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from firm.launch.kfp_run import MIN_KFP_VERSION, api_client

Area = Literal["operators", "rbac", "objects", "istio", "nodes", "network"]

CRDS: dict[str, tuple[str, bool, str]] = {
    # name: (what, required, how to install)
    "pytorchjobs.kubeflow.org": (
        "Kubeflow Training Operator v1 (PyTorchJob)", True,
        "install the Training Operator v1: kubectl apply --server-side -k "
        "'github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.2'",
    ),
    "trainjobs.trainer.kubeflow.org": (
        "Kubeflow Trainer v2 (TrainJob)", False, "optional: FIRM's TrainJob backend is not shipped yet",
    ),
    "workflows.argoproj.io": ("Argo Workflows (KFP's engine)", False, "installed with Kubeflow Pipelines"),
    "podgroups.scheduling.volcano.sh": (
        "Volcano (gang scheduling)", False, "needed only by job specs with `gang:` (scheduler_name: volcano)",
    ),
    "podgroups.scheduling.x-k8s.io": (
        "scheduler-plugins coscheduling (gang scheduling)", False,
        "needed only by job specs with `gang:` (scheduler_name: scheduler-plugins-scheduler)",
    ),
}  # fmt: skip
BACKEND_CRDS = {"pytorchjob": "pytorchjobs.kubeflow.org", "trainjob": "trainjobs.trainer.kubeflow.org"}


class Permission(BaseModel):
    group: str
    resource: str
    verbs: list[str]
    subresource: str = ""
    where: Literal["jobs", "steps"] = "jobs"
    why: str


# What FIRM's pipeline steps do with the Kubernetes API, as the pipeline ServiceAccount: the launcher step
# (firm.launch.pytorchjob, firm.launch.kfp_run), the deploy step (firm.launch.reward_service), and what KFP's own
# driver/launcher/executor do in the step's pod (kubeflow/pipelines
# manifests/kustomize/base/pipeline/pipeline-runner-role.yaml).
PIPELINE_PERMISSIONS: list[Permission] = [
    Permission(group="kubeflow.org", resource="pytorchjobs", verbs=["create", "get", "list", "delete"],
               why="launcher steps run training jobs"),
    Permission(group="", resource="pods", verbs=["list"], why="launcher steps find job pods"),
    Permission(group="", resource="pods", subresource="log", verbs=["get"], why="launcher steps stream rank 0's log"),
    Permission(group="apps", resource="deployments", verbs=["get", "patch"],
               why="the deploy step rolls out the reward service"),
    Permission(group="", resource="pods", verbs=["get"], where="steps",
               why="KFP's driver and a stopped launcher step read their own pod"),
    Permission(group="argoproj.io", resource="workflows", verbs=["get"], where="steps",
               why="KFP's driver; a stopped launcher step tells a run termination from an eviction"),
    Permission(group="argoproj.io", resource="workflowtaskresults", verbs=["create", "patch"], where="steps",
               why="Argo's executor reports each step's outputs"),
    Permission(group="", resource="configmaps", verbs=["get"], where="steps", why="KFP's driver reads kfp-launcher"),
    Permission(group="", resource="secrets", verbs=["get"], where="steps",
               why="KFP's driver reads mlpipeline-minio-artifact"),
]  # fmt: skip


class Check(BaseModel):
    area: Area
    name: str
    ok: bool | None = Field(description="True ✓, False ✗, None: information only")
    detail: str
    fix: str = ""


class DoctorReport(BaseModel):
    checks: list[Check]
    training_backends: list[str] = Field(description="pytorchjob and/or trainjob: the CRDs installed")
    kfp_version: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


def _version_tuple(v: str) -> tuple[int, ...] | None:
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", v.strip())
    return tuple(int(x or 0) for x in m.groups()) if m else None


def version_at_least(v: str, minimum: str = MIN_KFP_VERSION) -> bool | None:
    have, need = _version_tuple(v), _version_tuple(minimum)
    return None if have is None or need is None else have >= need


def _tcp(endpoint: str, timeout: float) -> str | None:
    """None when `endpoint` (host:port or a URL) accepts a TCP connection, else why not."""
    hostport = re.sub(r"^[a-z]+://", "", endpoint).split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return f"{endpoint!r} is not host:port"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return " ".join(str(exc).split()) or type(exc).__name__


def cluster_doctor(
    namespace: str | None = None,
    pipeline_namespace: str | None = None,
    kfp_namespace: str = "kubeflow",
    network: bool = True,
    timeout: float = 3.0,
    api: Any = None,
) -> DoctorReport:
    """Run every check (see the module docstring). `namespace`: where jobs run (default: settings `namespace`);
    `pipeline_namespace`: where pipeline steps run (multi-user Kubeflow: the profile namespace; default: the same)."""
    from kubernetes import client

    from firm.config import get_settings

    settings = get_settings()
    cluster = settings.cluster
    ns = namespace or settings.namespace
    pns = pipeline_namespace or ns
    api = api or api_client()
    core, ext = client.CoreV1Api(api), client.ApiextensionsV1Api(api)
    authz = client.AuthorizationV1Api(api)
    checks: list[Check] = []

    def add(area: Area, name: str, ok: bool | None, detail: str, fix: str = "") -> None:
        checks.append(Check(area=area, name=name, ok=ok, detail=detail, fix=fix if ok is False else ""))

    def guarded(fn: Callable[[], Any], what: str, area: Area, fix: str) -> Any:
        try:
            return fn()
        except Exception as exc:
            code = _status(exc)
            if code == 404:
                return None
            reason = "forbidden" if code == 403 else " ".join(str(exc).split())[:160]
            add(area, what, False, f"cannot read: {reason}", fix)
            return False

    # ------------------------------------------------------------------ operators
    present: dict[str, bool] = {}
    for crd, (what, required, how) in CRDS.items():
        got = guarded(lambda c=crd: ext.read_custom_resource_definition(c), crd, "operators",
                      "grant get on customresourcedefinitions (or run as a cluster admin)")  # fmt: skip
        if got is False:
            present[crd] = False
            continue
        present[crd] = got is not None
        if got is not None:
            versions = [v.name for v in got.spec.versions if v.served]
            add("operators", crd, True, f"{what}: installed ({', '.join(versions)})")
        else:
            add("operators", crd, False if required else None, f"{what}: not installed", how)
    backends = [b for b, crd in BACKEND_CRDS.items() if present.get(crd)]
    if "pytorchjob" in backends:
        add("operators", "training backend", True, f"supported: {', '.join(backends)}; FIRM uses pytorchjob")
    else:
        add("operators", "training backend", False,
            f"supported: {', '.join(backends) or 'none'}; FIRM's launcher needs pytorchjob",
            CRDS["pytorchjobs.kubeflow.org"][2])  # fmt: skip

    kfp_version = None
    cm = guarded(lambda: core.read_namespaced_config_map("pipeline-install-config", kfp_namespace),
                 "Kubeflow Pipelines", "operators", f"grant get on configmaps in {kfp_namespace}")  # fmt: skip
    if cm:
        kfp_version = (cm.data or {}).get("appVersion")
    if cm is not False and not kfp_version:
        dep = guarded(lambda: client.AppsV1Api(api).read_namespaced_deployment("ml-pipeline", kfp_namespace),
                      "Kubeflow Pipelines", "operators", f"grant get on deployments in {kfp_namespace}")  # fmt: skip
        if dep:
            image = dep.spec.template.spec.containers[0].image or ""
            kfp_version = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else None
            kfp_version = kfp_version or "unknown"
    if kfp_version is None and cm is not False:
        add("operators", "Kubeflow Pipelines", False, f"not found in namespace {kfp_namespace}",
            f"install Kubeflow Pipelines >= {MIN_KFP_VERSION}, or name its namespace with --kfp-namespace")  # fmt: skip
    elif kfp_version is not None:
        ok = version_at_least(kfp_version)
        add("operators", "Kubeflow Pipelines", ok,
            f"version {kfp_version} in {kfp_namespace} (FIRM's pipelines need >= {MIN_KFP_VERSION})",
            f"upgrade Kubeflow Pipelines to {MIN_KFP_VERSION} or later")  # fmt: skip

    # ------------------------------------------------------------------ RBAC
    psa, tsa = cluster.pipeline_service_account, cluster.service_account
    for sa, sa_ns, role in ((psa, pns, "pipeline"), (tsa, ns, "training")):
        if not sa:
            continue
        got = guarded(lambda a=sa, n=sa_ns: core.read_namespaced_service_account(a, n), f"{role} ServiceAccount",
                      "rbac", "grant get on serviceaccounts")  # fmt: skip
        if got is not False:
            add("rbac", f"{role} ServiceAccount", got is not None, f"{sa_ns}/{sa}" + ("" if got else " does not exist"),
                f"create ServiceAccount {sa} in {sa_ns} (the FIRM chart does)")  # fmt: skip
    user = f"system:serviceaccount:{pns}:{psa}"
    review_failed = False
    for perm in PIPELINE_PERMISSIONS:
        where = ns if perm.where == "jobs" else pns
        resource = perm.resource + (f"/{perm.subresource}" if perm.subresource else "")
        denied: list[str] = []
        for verb in perm.verbs:
            body = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
                user=user, groups=["system:serviceaccounts", f"system:serviceaccounts:{pns}"],
                resource_attributes=client.V1ResourceAttributes(
                    group=perm.group, resource=perm.resource, subresource=perm.subresource or None, verb=verb,
                    namespace=where,
                ),
            ))  # fmt: skip
            try:
                allowed = bool(authz.create_subject_access_review(body).status.allowed)
            except Exception as exc:
                review_failed = True
                reason = "forbidden" if _status(exc) == 403 else " ".join(str(exc).split())[:160]
                add("rbac", "permission review", False, f"cannot create SubjectAccessReviews: {reason}",
                    "run the doctor as a user who may create subjectaccessreviews (authorization.k8s.io)")  # fmt: skip
                break
            if not allowed:
                denied.append(verb)
        if review_failed:
            break
        group = perm.group or "core"
        name = f"{psa}: {resource} ({group}) in {where}"
        if denied:
            add("rbac", name, False, f"denied: {', '.join(denied)} — {perm.why}",
                f"grant {', '.join(denied)} on {resource} ({group}) in {where} to ServiceAccount {pns}/{psa}")  # fmt: skip
        else:
            add("rbac", name, True, f"{', '.join(perm.verbs)} — {perm.why}")

    # ------------------------------------------------------------------ objects
    secrets: list[tuple[str, bool]] = []
    for ref in (cluster.object_store_secret, cluster.hf_token_secret):
        if ref is not None:
            secrets.append((ref.name, ref.optional))
    secrets += [(n, False) for n in cluster.image_pull_secrets]
    wanted: dict[str, list[tuple[str, str, bool]]] = {}
    for where in dict.fromkeys([ns, pns]):
        items = [("configmap", cluster.settings_configmap, False), *(("secret", n, o) for n, o in secrets)]
        wanted[where] = items
    wanted.setdefault(pns, [])
    wanted[pns] = [
        *wanted[pns],
        ("configmap", "kfp-launcher", False),
        ("secret", "mlpipeline-minio-artifact", False),
    ]
    for where, items in wanted.items():
        for kind, name, optional in items:
            read = core.read_namespaced_config_map if kind == "configmap" else core.read_namespaced_secret
            got = guarded(lambda r=read, n=name, w=where: r(n, w), f"{kind} {where}/{name}", "objects",
                          f"grant get on {kind}s in {where}")  # fmt: skip
            if got is False:
                continue
            if got is not None:
                add("objects", f"{kind} {where}/{name}", True, "exists")
            else:
                origin = "Kubeflow Pipelines creates it" if name in ("kfp-launcher", "mlpipeline-minio-artifact") \
                    else "the FIRM chart creates or names it"  # fmt: skip
                add("objects", f"{kind} {where}/{name}", None if optional else False,
                    "missing" + (" (optional)" if optional else ""),
                    f"create {kind} {name} in namespace {where} ({origin}; a pod only sees its own namespace's)")  # fmt: skip

    # ------------------------------------------------------------------ Istio
    for where in dict.fromkeys([ns, pns]):
        obj = guarded(lambda w=where: core.read_namespace(w), f"namespace {where}", "istio",
                      "grant get on namespaces")  # fmt: skip
        if obj is False:
            continue
        if obj is None:
            add("istio", f"namespace {where}", False, "does not exist", f"create namespace {where}")
            continue
        labels = obj.metadata.labels or {}
        injected = labels.get("istio-injection") == "enabled" or "istio.io/rev" in labels
        add("istio", f"namespace {where}", True,
            "sidecar injection on: FIRM's job and step pods opt out (sidecar.istio.io/inject=false)" if injected
            else "no sidecar injection")  # fmt: skip

    # ------------------------------------------------------------------ nodes
    nodes = guarded(lambda: core.list_node().items, "nodes", "nodes", "grant list on nodes (cluster scope)")
    if nodes is not False:
        nodes = nodes or []
        for pool_name, pool in cluster.node_pools.items():
            sel = pool.selector()
            match = [n for n in nodes if all((n.metadata.labels or {}).get(k) == v for k, v in sel.items())]
            label = ", ".join(f"{k}={v}" for k, v in sel.items()) or "any node"
            if not match:
                add("nodes", f"pool {pool_name}", False, f"no node carries {label}",
                    f"label the pool's nodes, or fix node_pools.{pool_name}.node_selector in the settings")  # fmt: skip
                continue
            if pool.is_gpu:
                gpus = [
                    int(str((n.status.allocatable or {}).get(pool.gpu_resource, "0")) or 0) for n in match
                ]
                fit = sum(g >= pool.gpus_per_node for g in gpus)
                if not fit:
                    add("nodes", f"pool {pool_name}", False,
                        f"{len(match)} node(s) with {label}, none offers {pool.gpus_per_node} {pool.gpu_resource}",
                        f"install the GPU device plugin (NVIDIA GPU operator), or fix node_pools.{pool_name}."
                        "gpu_resource / gpus_per_node")  # fmt: skip
                    continue
                add("nodes", f"pool {pool_name}", True,
                    f"{fit} node(s) with {label} and {pool.gpus_per_node} {pool.gpu_resource}")  # fmt: skip
            else:
                add("nodes", f"pool {pool_name}", True, f"{len(match)} node(s) with {label}")

    # ------------------------------------------------------------------ network
    if network:
        if settings.store_uri.startswith("s3://") and settings.s3_endpoint:
            why = _tcp(settings.s3_endpoint, timeout)
            add("network", "object store", why is None, f"{settings.s3_endpoint}" + (f": {why}" if why else ""),
                "check FIRM_S3_ENDPOINT, or run the doctor where the cluster's services resolve (in a pod, or "
                "through kubectl port-forward)")  # fmt: skip
        else:
            add("network", "object store", None, f"{settings.store_uri} is not an s3:// store: not checked")
        why = _tcp(settings.triton_url, timeout)
        add("network", "reward service", None if why else True,
            f"{settings.triton_url}" + (f": {why} (deployed by the pipeline's deploy step)" if why else ""))  # fmt: skip
    return DoctorReport(checks=checks, training_backends=backends, kfp_version=kfp_version)
