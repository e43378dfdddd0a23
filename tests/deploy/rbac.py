"""A small evaluator of rendered namespaced RBAC against the API calls each actor makes.

    problems = check_rbac(objs, subjects, calls)

- `calls`: `Call`s (verb, API group, resource, namespace, resource name) an actor makes as a ServiceAccount; the
  tables of who calls what live in `tests/deploy/rbac_calls.py` (KFP and Argo from pinned upstream files, FIRM's own
  steps; calls recorded from the fake API server of tests/launch can be turned into `Call`s with `call_from_request`).
- `check_rbac` reports every call the rendered Roles do not allow, every grant no call needs (nothing broader than
  listed), every wildcard, and any cluster-scoped RBAC.

Authorization follows Kubernetes' RBAC rules: a RoleBinding grants its Role's rules in the binding's namespace to its
subjects; a rule matches a request when its apiGroups, resources (subresources as "pods/log") and verbs contain the
request's, and, when it lists resourceNames, the request names one of them (so create/list never match a rule with
resourceNames).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Call:
    actor: str
    verb: str
    group: str
    resource: str
    namespace: str
    name: str | None = None
    source: str = ""

    def __str__(self) -> str:
        target = f"{self.resource}{'/' + self.name if self.name else ''}"
        group = self.group or "core"
        return f"{self.actor}: {self.verb} {group} {target} in {self.namespace} ({self.source})"


@dataclass(frozen=True)
class Subject:
    namespace: str
    name: str


def _rule_allows(rule: dict[str, Any], call: Call) -> bool:
    if call.group not in rule.get("apiGroups", []) or call.resource not in rule.get("resources", []):
        return False
    if call.verb not in rule.get("verbs", []):
        return False
    names = rule.get("resourceNames")
    return not names or (call.name is not None and call.name in names)


def bound_rules(objs: list[dict[str, Any]], subject: Subject, namespace: str) -> list[dict[str, Any]]:
    """The rules `subject` holds in `namespace` through RoleBindings to Roles of that namespace."""
    roles = {
        o["metadata"]["name"]: o
        for o in objs
        if o["kind"] == "Role" and o["metadata"]["namespace"] == namespace
    }
    rules = []
    for b in objs:
        if b["kind"] != "RoleBinding" or b["metadata"]["namespace"] != namespace:
            continue
        if not any(
            s["kind"] == "ServiceAccount"
            and s["name"] == subject.name
            and s.get("namespace") == subject.namespace
            for s in b.get("subjects", [])
        ):
            continue
        ref = b["roleRef"]
        if ref["kind"] == "Role" and ref["name"] in roles:
            rules += roles[ref["name"]]["rules"]
    return rules


def allowed(objs: list[dict[str, Any]], subject: Subject, call: Call) -> bool:
    return any(_rule_allows(r, call) for r in bound_rules(objs, subject, call.namespace))


def wildcard_problems(objs: list[dict[str, Any]]) -> list[str]:
    out = []
    for o in objs:
        if o["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            out.append(f"{o['kind']}/{o['metadata']['name']}: cluster-scoped RBAC")
        if o["kind"] == "RoleBinding" and o["roleRef"]["kind"] == "ClusterRole":
            out.append(f"RoleBinding/{o['metadata']['name']}: binds a ClusterRole")
        for i, r in enumerate(o.get("rules", []) if o["kind"] == "Role" else []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                if "*" in r.get(field, []):
                    out.append(
                        f"Role/{o['metadata']['namespace']}/{o['metadata']['name']} rule {i}: * in {field}"
                    )
    return out


def unused_grants(objs: list[dict[str, Any]], subject: Subject, calls: Iterable[Call]) -> list[str]:
    """Every (role rule, group, resource, verb[, name]) the subject is granted that none of `calls` uses."""
    calls = list(calls)
    out = []
    namespaces = {b["metadata"]["namespace"] for b in objs if b["kind"] == "RoleBinding"}
    for ns in sorted(namespaces):
        for rule in bound_rules(objs, subject, ns):
            names = rule.get("resourceNames") or [None]
            for g in rule["apiGroups"]:
                for res in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in names:
                            used = any(
                                c.namespace == ns
                                and c.group == g
                                and c.resource == res
                                and c.verb == verb
                                and (name is None or c.name == name)
                                for c in calls
                            )
                            if not used:
                                what = f"{verb} {g or 'core'} {res}{'/' + name if name else ''}"
                                out.append(
                                    f"{subject.namespace}/{subject.name} may {what} in {ns}: no call needs it"
                                )
    return out


def check_rbac(objs: list[dict[str, Any]], calls_by_subject: dict[Subject, list[Call]]) -> list[str]:
    problems = wildcard_problems(objs)
    for subject, calls in calls_by_subject.items():
        problems += [
            f"denied: {c} as {subject.namespace}/{subject.name}"
            for c in calls
            if not allowed(objs, subject, c)
        ]
        problems += unused_grants(objs, subject, calls)
    return problems


_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/namespaces/(?P<ns>[^/]+)/(?P<res>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def call_from_request(actor: str, method: str, path: str, query: str = "", source: str = "") -> Call:
    """The RBAC request a namespaced REST call is (what the fake API server of tests/launch records)."""
    m = _PATH.match(path.split("?", 1)[0])
    if not m:
        raise ValueError(f"not a namespaced resource path: {path}")
    resource = m["res"] + (f"/{m['sub']}" if m["sub"] else "")
    if method == "GET":
        verb = "get" if m["name"] else ("watch" if "watch=true" in query or "watch=1" in query else "list")
    else:
        verb = _VERBS[method]
    return Call(actor, verb, m["group"] or "", resource, m["ns"], m["name"], source or f"{method} {path}")
