"""The chart on a stock Kubeflow cluster (issue 26): pipeline steps run in other namespaces than the release
(standalone KFP: `kubeflow`; multi-user: profile namespaces), so everything a step or a job it launches references
must exist there; the pipeline Roles cover exactly what KFP, Argo and FIRM do; Istio, pull secrets, `helm --wait`,
upgrades, gRPC load spreading, disruption budgets, ephemeral storage, node pools, NCCL and gang scheduling."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import RENDERS, Helm, by_kind, merged_values, objects
from tests.deploy.k8s_checks import containers, pod_templates
from tests.deploy.rbac import Call, Subject, call_from_request, check_rbac
from tests.deploy.rbac_calls import pipeline_run_calls
from tests.deploy.references import check_references, missing, settings_references
from tests.deploy.render_manifests import CHART

RELEASE_NS = "firm"


def pipeline_namespaces(values: dict[str, Any]) -> list[str]:
    return values["pipelines"]["namespaces"] or [RELEASE_NS]


def external_objects(values: dict[str, Any]) -> set[tuple[str, str, str]]:
    """What the operator creates beside the chart: the Secrets the values name, in the release namespace and in
    every pipeline namespace (the chart's docs say so)."""
    names = [
        values["objectStore"]["existingSecret"],
        values["minio"]["auth"]["existingSecret"],
        values["hfToken"]["existingSecret"],
        *values["images"]["pullSecrets"],
    ]
    namespaces = {RELEASE_NS, *pipeline_namespaces(values)}
    return {("Secret", ns, n) for ns in namespaces for n in names if n}


def test_the_ci_values_cover_standalone_kfp_and_multi_user_kubeflow() -> None:
    assert merged_values("standalone-kfp-values")["pipelines"]["namespaces"] == ["kubeflow"]
    multi = merged_values("multi-user-values")
    assert len(multi["pipelines"]["namespaces"]) >= 2 and multi["images"]["pullSecrets"]
    assert not multi["minio"]["enabled"]


# ------------------------------------------------------------------------------------------------ references


@pytest.mark.parametrize("name", RENDERS)
def test_everything_a_pod_uses_exists_in_its_namespace(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objs, values = rendered[name], merged_values(name)
    assert check_references(objs, external_objects(values)) == []
    # ... and what FIRM launches from each namespace's settings (PyTorchJobs, pipeline steps) exists there too
    assert missing(settings_references(objs), objs, external_objects(values)) == []


def test_the_reference_check_catches_what_is_missing(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["standalone-kfp-values"]
    without = [o for o in objs if not (o["kind"] == "ConfigMap" and o["metadata"]["namespace"] == "kubeflow")]
    without.append(
        next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["namespace"] == "kubeflow")
    )
    without[-1] = {**without[-1], "metadata": {**without[-1]["metadata"], "name": "renamed"}}
    problems = missing(settings_references(without), without)
    assert any("ConfigMap kubeflow/firm-settings does not exist" in p for p in problems), problems
    pod = copy.deepcopy(by_kind(objs, "Deployment")["firm-reward-edit"])
    pod["metadata"]["namespace"] = "elsewhere"
    found = check_references([*objs, pod])
    assert any("elsewhere/firm-settings does not exist" in p for p in found)
    assert any("ServiceAccount elsewhere/firm-workload does not exist" in p for p in found)
    pol = copy.deepcopy(by_kind(objs, "NetworkPolicy")["firm-reward"])
    pol["spec"]["podSelector"] = {"matchLabels": {"app": "nothing"}}
    assert "NetworkPolicy/firm/firm-reward selects no pod" in check_references([*objs, pol])


@pytest.mark.parametrize("name", ["standalone-kfp-values", "multi-user-values"])
def test_each_pipeline_namespace_gets_what_steps_and_their_jobs_reference(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objs, values = rendered[name], merged_values(name)
    here = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs}
    for ns in pipeline_namespaces(values):
        assert ns != RELEASE_NS
        for kind, obj in (
            ("ServiceAccount", "firm-pipeline-runner"),
            ("ServiceAccount", "firm-trainer"),
            ("ConfigMap", "firm-settings"),
            ("Role", "firm-pipeline-runner"),
            ("RoleBinding", "firm-pipeline-runner"),
        ):
            assert (kind, ns, obj) in here, f"{kind} {ns}/{obj}"
        (cm,) = [
            o
            for o in objs
            if o["kind"] == "ConfigMap"
            and o["metadata"]["namespace"] == ns
            and o["metadata"]["name"] == "firm-settings"
        ]
        # the PyTorchJobs a step launches run beside it; the reward service stays reachable by its full name
        assert cm["data"]["FIRM_NAMESPACE"] == ns
        assert cm["data"]["FIRM_TRITON_URL"].startswith(f"firm-reward-edit.{RELEASE_NS}.svc.")
        assert (
            cm["data"]["FIRM_CLUSTER__REWARD_NAMESPACE"] == RELEASE_NS
        )  # where a deploy step finds the Deployment
        if values["minio"]["enabled"]:
            secrets = [
                o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "firm-object-store"
            ]
            assert {s["metadata"]["namespace"] for s in secrets} == {RELEASE_NS, ns}
            assert len({yaml.safe_dump(s["data"]) for s in secrets}) == 1  # the same credentials everywhere
    # the release namespace keeps its own settings (FIRM_NAMESPACE = the release)
    release_cm = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["namespace"] == RELEASE_NS]
    assert [c["data"]["FIRM_NAMESPACE"] for c in release_cm] == [RELEASE_NS]


@pytest.mark.parametrize("name", ["standalone-kfp-values", "multi-user-values"])
def test_network_policies_admit_firm_pods_of_the_pipeline_namespaces(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objs, values = rendered[name], merged_values(name)
    pols = by_kind(objs, "NetworkPolicy")
    for ns in pipeline_namespaces(values):
        step = {"app.kubernetes.io/name": "firm", "app.kubernetes.io/component": "trainer"}
        peers = pols["firm-reward"]["spec"]["ingress"][0]["from"]
        assert any(
            p.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": ns}
            and p["podSelector"]["matchLabels"].items() <= step.items()
            for p in peers
        ), ns
        if "firm-minio" in pols:
            peers = pols["firm-minio"]["spec"]["ingress"][0]["from"]
            assert any(
                p.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": ns}
                for p in peers
            ), ns


# ------------------------------------------------------------------------------------------------ RBAC


def _subjects(objs: list[dict[str, Any]], values: dict[str, Any]) -> dict[Subject, list[Call]]:
    rewards = sorted(by_kind(objs, "Deployment"))
    return {
        Subject(ns, "firm-pipeline-runner"): pipeline_run_calls(
            ns,
            RELEASE_NS,
            rewards,
            backend=values["training"]["backend"],
            kfp_launcher=values["pipelines"]["rbac"]["kfpLauncherConfigMap"],
            artifact_secrets=tuple(values["pipelines"]["rbac"]["artifactSecrets"]),
        )
        for ns in pipeline_namespaces(values)
    }


@pytest.mark.parametrize("name", RENDERS)
def test_pipeline_roles_allow_every_call_and_nothing_more(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objs = rendered[name]
    assert check_rbac(objs, _subjects(objs, merged_values(name))) == []
    assert {o["kind"] for o in objs} & {"ClusterRole", "ClusterRoleBinding"} == set()


def test_the_rbac_check_catches_denied_calls_and_broad_grants(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = copy.deepcopy(rendered["default"])
    subjects = _subjects(objs, merged_values("default"))
    (role,) = [o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == "firm-pipeline-runner"]
    # the Role of the old chart: PyTorchJobs and pods only, nothing for KFP's driver/launcher or Argo's executor
    role["rules"] = [
        {
            "apiGroups": ["kubeflow.org"],
            "resources": ["pytorchjobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["*"], "resources": ["secrets"], "verbs": ["get"]},
    ]
    problems = check_rbac(objs, subjects)
    text = "\n".join(problems)
    assert "denied: argo-executor: create argoproj.io workflowtaskresults" in text
    assert "denied: kfp-driver: get core configmaps/kfp-launcher" in text
    assert "may watch kubeflow.org pytorchjobs in firm: no call needs it" in text
    assert "may list core pods/log" in text
    assert "* in apiGroups" in text


def test_call_from_request_reads_rest_paths() -> None:
    assert call_from_request(
        "firm-step", "POST", "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs"
    ) == Call(
        "firm-step",
        "create",
        "kubeflow.org",
        "pytorchjobs",
        "team-a",
        None,
        "POST /apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs",
    )
    c = call_from_request("firm-step", "GET", "/api/v1/namespaces/firm/pods/p-0/log")
    assert (c.verb, c.group, c.resource, c.name) == ("get", "", "pods/log", "p-0")
    assert call_from_request("x", "GET", "/api/v1/namespaces/firm/pods", "watch=true").verb == "watch"


# ------------------------------------------------------------------------------------------------ pods


@pytest.mark.parametrize("name", RENDERS)
def test_pull_secrets_reach_every_pod_and_every_service_account(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objs, values = rendered[name], merged_values(name)
    want = [{"name": n} for n in values["images"]["pullSecrets"]]
    for pod_name, t in pod_templates(objs):
        assert t["spec"].get("imagePullSecrets", []) == want, pod_name
    # the ServiceAccounts carry them too: KFP steps and training jobs running as these accounts get them
    for sa in (o for o in objs if o["kind"] == "ServiceAccount"):
        assert sa.get("imagePullSecrets", []) == want, sa["metadata"]


@pytest.mark.parametrize("name", RENDERS)
def test_batch_pods_opt_out_of_istio_sidecars(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    jobs = [o for o in rendered[name] if o["kind"] == "Job"]
    assert jobs
    for job in jobs:
        meta = job["spec"]["template"]["metadata"]
        assert meta["labels"].get("sidecar.istio.io/inject") == "false", job["metadata"]["name"]


@pytest.mark.parametrize("name", RENDERS)
def test_every_container_requests_ephemeral_storage(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    for pod_name, t in pod_templates(rendered[name]):
        for c in containers(t):
            assert "ephemeral-storage" in c["resources"]["requests"], f"{pod_name}/{c['name']}"
    dep = by_kind(rendered["default"], "Deployment")["firm-reward-edit"]
    triton = dep["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["requests"]["ephemeral-storage"] == "80Gi"


@pytest.mark.parametrize("name", RENDERS)
def test_triton_keeps_nvidias_entrypoint(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    for dep in by_kind(rendered[name], "Deployment").values():
        (triton,) = dep["spec"]["template"]["spec"]["containers"]
        assert "command" not in triton and triton["args"][0] == "tritonserver"


# ------------------------------------------------------------------------------------------------ operations


def test_an_install_without_a_critic_is_ready_at_once(
    rendered: dict[str, list[dict[str, Any]]], helm: Helm
) -> None:
    """helm install --wait / Argo CD: a reward Deployment with no repository yet has 0 replicas (ready at once),
    not a pod whose init container waits for a model only a pipeline creates."""
    for name in ("default", "standalone-kfp-values"):
        for m in merged_values(name)["rewardService"]["models"]:
            dep = by_kind(rendered[name], "Deployment")[f"firm-reward-{m['name']}"]
            assert not m["repository"] and dep["spec"]["replicas"] == 0
    with_critic = by_kind(rendered["default-values"], "Deployment")["firm-reward-edit"]
    assert with_critic["spec"]["replicas"] == 1
    run = helm("install", "firm", CHART, "-n", "firm", "--dry-run=client")
    notes = run.out.split("NOTES:", 1)[1]
    assert "No critic is deployed yet" in notes and '"replicas":1' in notes.replace(" ", "")


def _chart_with_live_deployment(tmp_path: Path, annotations: dict[str, str]) -> Path:
    """A copy of the chart whose lookup of the live reward Deployment returns one with these pod annotations."""
    chart = tmp_path / "firm"
    shutil.copytree(CHART, chart)
    helpers = chart / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    real = '{{- toJson (lookup "apps/v1" "Deployment" .root.Release.Namespace .name | default dict) -}}'
    assert real in text
    live = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
    import json

    helpers.write_text(text.replace(real, "{{- " + json.dumps(json.dumps(live)) + " -}}"))
    return chart


@pytest.mark.parametrize(
    ("values_repo", "live", "want"),
    [
        # the deploy step rolled out v2; the values still say what the chart last rendered: keep v2
        (
            "s3://m/v1",
            {"firm.dev/model-repository": "s3://m/v2", "firm.dev/chart-repository": "s3://m/v1"},
            "s3://m/v2",
        ),
        # installed with no critic, the deploy step rolled one out: keep it, with replicas
        ("", {"firm.dev/model-repository": "s3://m/v2", "firm.dev/chart-repository": ""}, "s3://m/v2"),
        # the values name a new repository: roll it out
        (
            "s3://m/v3",
            {"firm.dev/model-repository": "s3://m/v2", "firm.dev/chart-repository": "s3://m/v1"},
            "s3://m/v3",
        ),
    ],
    ids=["keep-deployed", "keep-first-deploy", "values-changed"],
)
def test_helm_upgrade_keeps_the_repository_the_deploy_step_rolled_out(
    helm: Helm, write_values, tmp_path: Path, values_repo: str, live: dict[str, str], want: str
) -> None:
    chart = _chart_with_live_deployment(tmp_path, live)
    model = {
        "name": "edit",
        "repository": values_repo,
        "pool": "cpu",
        "gpus": 0,
        "replicas": 1,
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    }
    out = helm(
        "template", "firm", chart, "-n", "firm", "-f", write_values({"rewardService": {"models": [model]}})
    ).out
    dep = by_kind(objects(out), "Deployment")["firm-reward-edit"]
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["firm.dev/model-repository"] == want
    assert ann["firm.dev/chart-repository"] == values_repo
    assert dep["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    ("values_repo", "newer"),
    [("s3://m/v1", False), ("s3://m/v3", True)],
    ids=["same-values", "values-changed"],
)
def test_helm_upgrade_never_undoes_a_promotion(
    helm: Helm, write_values, tmp_path: Path, values_repo: str, newer: bool
) -> None:
    """The init container serves the promoted critic (current.json) unless the annotated repository was deployed
    after it (firm.dev/deployed-at): an upgrade with the same values keeps that time, so the promotion still wins;
    one whose values name a new repository is an explicit deploy and stamps it now."""
    from datetime import UTC, datetime

    then = "2020-01-01T00:00:00+00:00"
    live = {
        "firm.dev/model-repository": "s3://m/v2",
        "firm.dev/chart-repository": "s3://m/v1",
        "firm.dev/deployed-at": then,
    }
    chart = _chart_with_live_deployment(tmp_path, live)
    model = {
        "name": "edit",
        "repository": values_repo,
        "pool": "cpu",
        "gpus": 0,
        "replicas": 1,
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    }
    out = helm(
        "template", "firm", chart, "-n", "firm", "-f", write_values({"rewardService": {"models": [model]}})
    ).out
    pod = by_kind(objects(out), "Deployment")["firm-reward-edit"]["spec"]["template"]
    stamp = pod["metadata"]["annotations"]["firm.dev/deployed-at"]
    if newer:
        assert datetime.fromisoformat(stamp) > datetime(2024, 1, 1, tzinfo=UTC)
    else:
        assert stamp == then
    (init,) = pod["spec"]["initContainers"]
    assert "--service=firm-reward-edit" in init["command"]
    assert "--deployed-at=$(FIRM_DEPLOYED_AT)" in init["command"]


def test_grpc_scoring_can_spread_over_replicas(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["gpu-values"]
    services = by_kind(objs, "Service")
    pods = {n: d["spec"]["template"] for n, d in by_kind(objs, "Deployment").items()}
    for name, pod in pods.items():
        if name.endswith("-candidate"):  # one pod while a candidate is benched: no replicas to spread over
            continue
        headless = services[f"{name}-headless"]
        assert headless["spec"]["clusterIP"] == "None"
        assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]
        assert headless["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


@pytest.mark.parametrize("name", ["gpu-values", "multi-user-values"])
def test_disruption_budgets_never_block_a_drain(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    pdbs = by_kind(rendered[name], "PodDisruptionBudget")
    assert pdbs
    for pdb in pdbs.values():
        assert "minAvailable" not in pdb["spec"] and pdb["spec"]["maxUnavailable"] >= 1


def test_default_node_pools_need_no_labels_a_stock_cluster_lacks(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from tests.deploy.conftest import VALUES

    for pool in VALUES["nodePools"].values():
        assert pool["nodeSelector"] == {} and not pool["acceleratorLabel"]
    spec = by_kind(rendered["multi-user-values"], "Deployment")["firm-reward-edit"]["spec"]["template"][
        "spec"
    ]
    assert "nodeSelector" not in spec
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_minio_image_is_the_last_published_release(rendered: dict[str, list[dict[str, Any]]]) -> None:
    sts = by_kind(rendered["default"], "StatefulSet")["firm-minio"]
    image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"


def test_nccl_transport_reaches_training_pods_through_the_settings(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    data = by_kind(rendered["standalone-kfp-values"], "ConfigMap")["firm-settings"]["data"]
    assert data["NCCL_SOCKET_IFNAME"] == "eth0" and data["NCCL_IB_DISABLE"] == "1"
    multi = by_kind(rendered["multi-user-values"], "ConfigMap")["firm-settings"]["data"]
    assert multi["NCCL_IB_HCA"] == "mlx5_0,mlx5_1" and multi["NCCL_IB_GID_INDEX"] == "3"
    assert not any(
        k.startswith("NCCL_") for k in by_kind(rendered["default"], "ConfigMap")["firm-settings"]["data"]
    )


def test_gang_scheduling_is_opt_in_and_names_its_scheduler(helm: Helm, write_values) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["training"]["gangScheduling"]["enabled"] is False
    text = (CHART / "values.yaml").read_text()
    assert "Volcano" in text and "scheduler-plugins" in text
    on = objects(helm.template(write_values({"training": {"gangScheduling": {"enabled": True}}})))
    assert by_kind(on, "ConfigMap")["firm-settings"]["data"]["FIRM_CLUSTER__GANG_SCHEDULER"] == "volcano"
    bad = helm(
        "template",
        "firm",
        CHART,
        "-f",
        write_values({"training": {"gangScheduling": {"schedulerName": "kube"}}}),
        check=False,
    )
    assert bad.rc != 0 and "schedulerName" in bad.text
