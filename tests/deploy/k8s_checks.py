"""Object-level checks shared by the chart and kustomize tests: Kubernetes schema validation, pod security and
resources, and label-selector matching."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils

# kubernetes-validate reads and parses its schema files on every call, `_definitions.json` included (~7 ms each, 7 s
# over the deploy tests). The files never change during a run and `validate` only reads what it gets, so the parsed
# documents are kept (an lru_cache over the library's own reader; its validation itself is untouched).
if not hasattr(kubernetes_validate.utils.schema_contents, "cache_info"):
    kubernetes_validate.utils.schema_contents = lru_cache(maxsize=None)(
        kubernetes_validate.utils.schema_contents
    )

# kubernetes-validate ships schemas for 1.25 … 1.37 (see `all_versions()`); these are the versions FIRM supports.
K8S_VERSIONS = ("1.30.0", "1.35.0")
CUSTOM_GROUPS = ("kubeflow.org/", "monitoring.coreos.com/")
POD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet")
RUN_AS = 1000


def is_custom(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].startswith(CUSTOM_GROUPS)


def validate_builtin(obj: dict[str, Any], version: str) -> None:
    """Strict schema validation of a built-in object; a missing schema is a failure, not a warning."""
    assert not is_custom(obj), obj["kind"]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(
            f"{obj['kind']}/{obj['metadata']['name']} is not a valid Kubernetes {version} object: {path}: {exc.message}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(exc.message) from None


def pod_templates(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod template) of every workload, PyTorchJob replicas included."""
    for o in objs:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in POD_KINDS:
            template = o["spec"]["template"]
            claims = [c["metadata"]["name"] for c in o["spec"].get("volumeClaimTemplates", [])]
            if claims:  # a StatefulSet's pods get a volume per claim template
                volumes = [*template["spec"].get("volumes", []), *({"name": c} for c in claims)]
                template = {**template, "spec": {**template["spec"], "volumes": volumes}}
            yield name, template
        elif o["kind"] == "PyTorchJob":
            for replica, spec in o["spec"]["pytorchReplicaSpecs"].items():
                yield f"{name}[{replica}]", spec["template"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def check_pod_hardening(name: str, template: dict[str, Any]) -> None:
    """The security and resource defaults every FIRM pod carries."""
    spec = template["spec"]
    psc = spec.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot"
    assert psc.get("runAsUser") == RUN_AS and (psc.get("runAsGroup", RUN_AS) == RUN_AS), f"{name}: uid/gid"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: pod seccompProfile"
    assert spec.get("automountServiceAccountToken") is False, f"{name}: API token mounted"
    mounts_needed = {v["name"] for v in spec.get("volumes", [])}
    for c in containers(template):
        cname = f"{name}/{c['name']}"
        sc = c.get("securityContext", {})
        assert sc.get("readOnlyRootFilesystem") is True, f"{cname}: root filesystem writable"
        assert sc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cname}: capabilities not dropped"
        assert not sc.get("privileged"), f"{cname}: privileged"
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cname}: runAsNonRoot"
        assert sc.get("runAsUser", psc.get("runAsUser")) == RUN_AS, f"{cname}: uid"
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                assert r in res.get(kind, {}), f"{cname}: no {r} {kind}"
        assert c.get("imagePullPolicy") in ("IfNotPresent", "Always"), f"{cname}: imagePullPolicy"
        image = c["image"]
        tail = image.rsplit("/", 1)[-1]
        assert ":" in tail or "@sha256:" in image, f"{cname}: image {image} names no tag or digest"
        assert not tail.endswith(":latest"), f"{cname}: image {image} is :latest"
        for m in c.get("volumeMounts", []):
            assert m["name"] in mounts_needed, f"{cname}: mounts unknown volume {m['name']}"
        if sc.get("readOnlyRootFilesystem"):
            # a read-only root needs a writable /tmp
            assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), (
                f"{cname}: no writable /tmp"
            )


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def named_ports(template: dict[str, Any]) -> set[str]:
    return {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p}
