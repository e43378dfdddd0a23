"""Referential integrity of rendered Kubernetes objects, checked offline.

A pod can only use a ServiceAccount, ConfigMap, Secret, PersistentVolumeClaim or image pull Secret of its own
namespace, and a NetworkPolicy only does something when it selects pods. `check_references` lists every reference
that the given objects do not satisfy:

    problems = check_references(objs, external={("Secret", "kubeflow", "firm-s3-credentials")})
    assert problems == []

`objs` is everything that will exist together (the chart's render, plus compiled pipeline pods, launcher jobs ...);
`external` names objects the operator creates outside it (kind, namespace, name). Pods come from Deployments,
StatefulSets (their volumeClaimTemplates count as claims), Jobs, DaemonSets, PyTorchJobs (every replica), plain Pods
and Argo Workflows' templates (namespace of the Workflow). References marked `optional: true` are skipped.

Other helpers reuse this for pods they build themselves: `pod_references(namespace, pod_spec)` gives the references of
one pod spec, `missing(references, objs, external)` checks them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# A ServiceAccount every namespace has (created by the controller manager).
BUILTIN = {("ServiceAccount", "default")}


@dataclass(frozen=True)
class Ref:
    """`who` (kind/name[/container]) uses the object `kind`/`name` in `namespace`."""

    who: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.who}: {self.kind} {self.namespace}/{self.name} does not exist"


def _ns(obj: dict[str, Any], default: str) -> str:
    return obj.get("metadata", {}).get("namespace") or default


def pods(
    objs: Iterable[dict[str, Any]], default_namespace: str = "default"
) -> Iterator[tuple[str, str, dict]]:
    """(who, namespace, pod spec) of every pod the objects run; StatefulSet claim templates become volumes."""
    for o in objs:
        kind, name, ns = o["kind"], o["metadata"]["name"], _ns(o, default_namespace)
        who = f"{kind}/{ns}/{name}"
        spec = o.get("spec", {})
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            pod = dict(spec["template"]["spec"])
            claims = [c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])]
            if claims:
                pod["volumes"] = [
                    *[v for v in pod.get("volumes", []) if v["name"] not in claims],
                    *({"name": c, "_claimTemplate": True} for c in claims),
                ]
            yield who, ns, pod
        elif kind == "CronJob":
            yield who, ns, spec["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield who, ns, spec
        elif kind == "PyTorchJob":
            for replica, rs in spec.get("pytorchReplicaSpecs", {}).items():
                yield f"{who}[{replica}]", ns, rs["template"]["spec"]
        elif kind == "Workflow":  # Argo: every template's pod runs in the Workflow's namespace
            base = {
                k: spec[k]
                for k in ("serviceAccountName", "imagePullSecrets", "volumes", "automountServiceAccountToken")
                if k in spec
            }
            for t in spec.get("templates", []):
                if "container" in t or "script" in t:
                    pod = {**base, "containers": [t.get("container") or t.get("script")]}
                    pod["initContainers"] = t.get("initContainers", [])
                    pod["volumes"] = [*base.get("volumes", []), *t.get("volumes", [])]
                    if "serviceAccountName" in t:
                        pod["serviceAccountName"] = t["serviceAccountName"]
                    yield f"{who}/{t['name']}", ns, pod


def pod_references(who: str, namespace: str, pod: dict[str, Any]) -> list[Ref]:
    """Every ServiceAccount, ConfigMap, Secret, PVC and image pull Secret one pod spec needs in `namespace`."""
    refs: list[Ref] = []

    def add(kind: str, name: str, where: str = "") -> None:
        refs.append(Ref(f"{who}{where}", kind, namespace, name))

    add("ServiceAccount", pod.get("serviceAccountName") or pod.get("serviceAccount") or "default")
    for s in pod.get("imagePullSecrets", []):
        add("Secret", s["name"], " imagePullSecrets")
    for v in pod.get("volumes", []):
        if v.get("_claimTemplate"):
            continue
        if "configMap" in v and not v["configMap"].get("optional"):
            add("ConfigMap", v["configMap"]["name"], f" volume {v['name']}")
        if "secret" in v and not v["secret"].get("optional"):
            add("Secret", v["secret"]["secretName"], f" volume {v['name']}")
        if "persistentVolumeClaim" in v:
            add("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], f" volume {v['name']}")
        for src in v.get("projected", {}).get("sources", []):
            if "configMap" in src and not src["configMap"].get("optional"):
                add("ConfigMap", src["configMap"]["name"], f" volume {v['name']}")
            if "secret" in src and not src["secret"].get("optional"):
                add("Secret", src["secret"]["name"], f" volume {v['name']}")
    for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        where = f"/{c.get('name', '?')}"
        for e in c.get("envFrom", []):
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in e and not e[key].get("optional"):
                    add(kind, e[key]["name"], where)
        for e in c.get("env", []):
            vf = e.get("valueFrom", {})
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if key in vf and not vf[key].get("optional"):
                    add(kind, vf[key]["name"], f"{where} env {e['name']}")
    return refs


def _index(objs: Iterable[dict[str, Any]], default_namespace: str) -> set[tuple[str, str, str]]:
    return {(o["kind"], _ns(o, default_namespace), o["metadata"]["name"]) for o in objs}


def service_account_pull_secrets(
    objs: Iterable[dict[str, Any]], default_namespace: str = "default"
) -> list[Ref]:
    """A ServiceAccount's imagePullSecrets are added to every pod that runs as it: they must exist beside it."""
    return [
        Ref(
            f"ServiceAccount/{_ns(o, default_namespace)}/{o['metadata']['name']}",
            "Secret",
            _ns(o, default_namespace),
            s["name"],
        )
        for o in objs
        if o["kind"] == "ServiceAccount"
        for s in o.get("imagePullSecrets", [])
    ]


def missing(
    refs: Iterable[Ref],
    objs: Iterable[dict[str, Any]],
    external: Iterable[tuple[str, str, str]] = (),
    default_namespace: str = "default",
) -> list[str]:
    have = _index(objs, default_namespace) | set(external)
    return sorted(
        {
            str(r)
            for r in refs
            if (r.kind, r.namespace, r.name) not in have and (r.kind, r.name) not in BUILTIN
        }
    )


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_labels(
    objs: Iterable[dict[str, Any]], default_namespace: str = "default"
) -> list[tuple[str, str, dict]]:
    """(who, namespace, labels) of every pod template."""
    out = []
    for o in objs:
        ns = _ns(o, default_namespace)
        who = f"{o['kind']}/{ns}/{o['metadata']['name']}"
        spec = o.get("spec", {})
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            out.append((who, ns, spec["template"].get("metadata", {}).get("labels", {})))
        elif o["kind"] == "CronJob":
            out.append(
                (who, ns, spec["jobTemplate"]["spec"]["template"].get("metadata", {}).get("labels", {}))
            )
        elif o["kind"] == "Pod":
            out.append((who, ns, o["metadata"].get("labels", {})))
        elif o["kind"] == "PyTorchJob":
            for replica, rs in spec.get("pytorchReplicaSpecs", {}).items():
                out.append((f"{who}[{replica}]", ns, rs["template"].get("metadata", {}).get("labels", {})))
    return out


def network_policy_problems(objs: list[dict[str, Any]], default_namespace: str = "default") -> list[str]:
    """Every NetworkPolicy selects at least one pod of its namespace."""
    labelled = pod_labels(objs, default_namespace)
    problems = []
    for o in objs:
        if o["kind"] != "NetworkPolicy":
            continue
        ns = _ns(o, default_namespace)
        selector = o["spec"].get("podSelector", {})
        if not any(pns == ns and _matches(selector, labels) for _, pns, labels in labelled):
            problems.append(f"NetworkPolicy/{ns}/{o['metadata']['name']} selects no pod")
    return problems


def rbac_problems(objs: list[dict[str, Any]], default_namespace: str = "default") -> list[str]:
    """Every RoleBinding refers to a Role of its namespace and binds ServiceAccounts that exist."""
    have = _index(objs, default_namespace)
    problems = []
    for o in objs:
        if o["kind"] != "RoleBinding":
            continue
        ns = _ns(o, default_namespace)
        ref = o["roleRef"]
        if ref["kind"] == "Role" and ("Role", ns, ref["name"]) not in have:
            problems.append(
                f"RoleBinding/{ns}/{o['metadata']['name']}: Role {ns}/{ref['name']} does not exist"
            )
        for s in o.get("subjects", []):
            if (
                s["kind"] == "ServiceAccount"
                and ("ServiceAccount", s.get("namespace", ns), s["name"]) not in have
            ):
                problems.append(
                    f"RoleBinding/{ns}/{o['metadata']['name']}: ServiceAccount {s.get('namespace', ns)}/{s['name']}"
                    " does not exist"
                )
    return problems


def check_references(
    objs: list[dict[str, Any]],
    external: Iterable[tuple[str, str, str]] = (),
    default_namespace: str = "default",
) -> list[str]:
    """Every problem: missing objects pods use, NetworkPolicies that select nothing, dangling RoleBindings."""
    refs = [r for who, ns, pod in pods(objs, default_namespace) for r in pod_references(who, ns, pod)]
    refs += service_account_pull_secrets(objs, default_namespace)
    return [
        *missing(refs, objs, external, default_namespace),
        *network_policy_problems(objs, default_namespace),
        *rbac_problems(objs, default_namespace),
    ]


def settings_references(objs: list[dict[str, Any]], default_namespace: str = "default") -> list[Ref]:
    """What FIRM launches from a namespace's settings ConfigMap (a PyTorchJob in FIRM_NAMESPACE, a pipeline step
    beside the ConfigMap) will reference: the trainer ServiceAccount, the settings ConfigMap and the object-store
    Secret where the job runs, and the pipeline ServiceAccount where the step runs."""
    import json

    refs = []
    for o in objs:
        data = o.get("data") or {}
        if o["kind"] != "ConfigMap" or "FIRM_CLUSTER__SETTINGS_CONFIGMAP" not in data:
            continue
        here = _ns(o, default_namespace)
        who = f"ConfigMap/{here}/{o['metadata']['name']}"
        jobs_ns = data.get("FIRM_NAMESPACE", here)
        refs.append(
            Ref(f"{who} (launched jobs)", "ConfigMap", jobs_ns, data["FIRM_CLUSTER__SETTINGS_CONFIGMAP"])
        )
        if data.get("FIRM_CLUSTER__SERVICE_ACCOUNT"):
            refs.append(
                Ref(
                    f"{who} (launched jobs)", "ServiceAccount", jobs_ns, data["FIRM_CLUSTER__SERVICE_ACCOUNT"]
                )
            )
        if data.get("FIRM_CLUSTER__OBJECT_STORE_SECRET"):
            secret = json.loads(data["FIRM_CLUSTER__OBJECT_STORE_SECRET"])
            if secret and not secret.get("optional"):
                refs.append(Ref(f"{who} (launched jobs)", "Secret", jobs_ns, secret["name"]))
        if data.get("FIRM_CLUSTER__PIPELINE_SERVICE_ACCOUNT"):
            refs.append(
                Ref(
                    f"{who} (pipeline steps)",
                    "ServiceAccount",
                    here,
                    data["FIRM_CLUSTER__PIPELINE_SERVICE_ACCOUNT"],
                )
            )
    return refs
