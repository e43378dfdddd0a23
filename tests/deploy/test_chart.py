"""charts/firm: lints, renders and dry-run installs with its defaults and every ci/*.yaml; every object is a valid
Kubernetes 1.30 / 1.35 object; the pods are hardened and bounded; names, ports, selectors, RBAC and NetworkPolicies
are what FIRM's code and recipes expect; values.schema.json rejects wrong types, unknown keys and missing values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import (
    CI_VALUES,
    RENDERS,
    VALUE_FILES,
    VALUES,
    Helm,
    by_kind,
    merged_values,
    objects,
)
from tests.deploy.k8s_checks import (
    K8S_VERSIONS,
    check_pod_hardening,
    containers,
    is_custom,
    named_ports,
    pod_templates,
    selects,
    validate_builtin,
)
from tests.deploy.render_manifests import CHART

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def test_the_ci_values_files_cover_cpu_gpu_and_external_s3() -> None:
    assert {p.stem for p in CI_VALUES} >= {"default-values", "gpu-values", "external-s3-values"}
    gpu = merged_values("gpu-values")["rewardService"]
    assert (
        gpu["autoscaling"]["enabled"] and gpu["metrics"]["serviceMonitor"]["enabled"] and gpu["pdb"]["create"]
    )
    ext = merged_values("external-s3-values")
    assert not ext["minio"]["enabled"] and ext["objectStore"]["existingSecret"]
    cpu = merged_values("default-values")
    assert all(VALUES["nodePools"][m["pool"]]["gpusPerNode"] == 0 for m in cpu["rewardService"]["models"])


# ------------------------------------------------------------------------------------------------ helm itself


@pytest.mark.parametrize("name", RENDERS)
def test_helm_lint_strict(helm: Helm, name: str) -> None:
    args = [a for p in VALUE_FILES[name] for a in ("-f", p)]
    run = helm("lint", "--strict", CHART, *args)
    assert "1 chart(s) linted, 0 chart(s) failed" in run.out, run.text
    assert "[WARNING]" not in run.out and "[ERROR]" not in run.out, run.out


@pytest.mark.parametrize("name", RENDERS)
def test_helm_install_dry_run_prints_how_to_reach_the_reward_service(helm: Helm, name: str) -> None:
    args = [a for p in VALUE_FILES[name] for a in ("-f", p)]
    run = helm("install", "firm", CHART, "-n", "firm", "--create-namespace", "--dry-run=client", *args)
    notes = run.out.split("NOTES:", 1)[1]
    first = merged_values(name)["rewardService"]["models"][0]["name"]
    assert f"port-forward service/firm-reward-{first} 8001:8001" in notes
    assert f"firm-reward-{first}.firm.svc.cluster.local:8001" in notes
    assert "firm.dev/reward-client=true" in notes


@pytest.mark.parametrize("name", RENDERS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_builtin_object_is_a_valid_kubernetes_object(
    rendered: dict[str, list[dict[str, Any]]], name: str, version: str
) -> None:
    objs = rendered[name]
    assert len(objs) >= 10
    for obj in objs:
        if not is_custom(obj):
            validate_builtin(obj, version)
    assert {o["kind"] for o in objs if is_custom(o)} <= {"ServiceMonitor"}


def test_strict_validation_catches_a_misspelled_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import copy

    dep = copy.deepcopy(by_kind(rendered["default"], "Deployment")["firm-reward-edit"])
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolcy"):
        validate_builtin(dep, K8S_VERSIONS[-1])


def test_every_object_lives_in_the_release_or_a_pipeline_namespace_and_nothing_is_cluster_wide(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, objs in rendered.items():
        allowed = {"firm", *merged_values(name)["pipelines"]["namespaces"]}
        for o in objs:
            ns = o["metadata"].get("namespace")
            assert ns in allowed, f"{name}: {o['kind']}/{o['metadata']['name']}"
            if ns != "firm":  # only what pipeline steps and the jobs they launch use goes there
                assert o["kind"] in ("ServiceAccount", "ConfigMap", "Secret", "Role", "RoleBinding"), o[
                    "kind"
                ]
            assert o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Namespace"), name
            assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "firm"
            assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == "firm"


# ------------------------------------------------------------------------------------------------ pods


@pytest.mark.parametrize("name", RENDERS)
def test_every_pod_is_hardened_and_bounded(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    pods = dict(pod_templates(rendered[name]))
    assert pods, name
    for pod_name, template in pods.items():
        check_pod_hardening(pod_name, template)
        assert template["spec"]["serviceAccountName"], pod_name


def test_hardening_check_catches_a_root_container(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import copy

    sts = copy.deepcopy(by_kind(rendered["default"], "StatefulSet")["firm-minio"])
    sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    with pytest.raises(AssertionError, match="root filesystem writable"):
        check_pod_hardening("minio", sts["spec"]["template"])


@pytest.mark.parametrize("name", RENDERS)
def test_reward_services_are_named_ported_and_fetch_their_repository(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    values = merged_values(name)
    objs = rendered[name]
    deployments, services = by_kind(objs, "Deployment"), by_kind(objs, "Service")
    models = values["rewardService"]["models"]
    assert {f"firm-reward-{m['name']}{c}" for m in models for c in ("", "-candidate")} == set(deployments)
    for m in models:
        dep, svc = deployments[f"firm-reward-{m['name']}"], services[f"firm-reward-{m['name']}"]
        pod = dep["spec"]["template"]
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
            "http": 8000,
            "grpc": 8001,
            "metrics": 8002,
        }
        assert selects(svc["spec"]["selector"], pod["metadata"]["labels"])
        assert selects(dep["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
        assert pod["metadata"]["annotations"]["firm.dev/model-repository"] == m["repository"]
        # the init container reads the repository from that annotation (what the deploy step patches) ...
        (init,) = pod["spec"]["initContainers"]
        assert init["name"] == "fetch-repository" and init["image"] == pod["spec"]["containers"][0]["image"]
        env = {e["name"]: e for e in init["env"]}
        assert env["FIRM_MODEL_REPOSITORY"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.annotations['firm.dev/model-repository']"
        )
        assert env["FIRM_DEPLOYED_AT"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.annotations['firm.dev/deployed-at']"
        )
        # the promoted critic (current.json of this service) wins over the annotation unless that is newer
        assert init["command"] == [
            "firmctl",
            "serve",
            "resolve-repository",
            f"--service=firm-reward-{m['name']}",
            "--default=$(FIRM_MODEL_REPOSITORY)",
            "--deployed-at=$(FIRM_DEPLOYED_AT)",
            "--fetch=/models/repo",
        ]
        assert "firm.dev/deployed-at" not in pod["metadata"]["annotations"]  # nothing to look up: no time
        # ... and tritonserver serves what it fetched, on the Service's ports
        (triton,) = pod["spec"]["containers"]
        assert triton["name"] == "triton" and "command" not in triton  # NVIDIA's entrypoint runs the args
        args = triton["args"]
        assert args[0] == "tritonserver"
        for arg in (
            "--model-repository=/models/repo",
            "--http-port=8000",
            "--grpc-port=8001",
            "--metrics-port=8002",
        ):
            assert arg in args
        assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {
            "http": 8000,
            "grpc": 8001,
            "metrics": 8002,
        }
        # probes on Triton's health endpoints; the startup budget fits loading an 8B critic (>= 20 min)
        assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        sp = triton["startupProbe"]
        assert sp["httpGet"]["path"] == "/v2/health/ready"
        assert sp["periodSeconds"] * sp["failureThreshold"] >= 20 * 60
        # a memory-backed /dev/shm with a size limit; the repository in an emptyDir both containers mount
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {mt["mountPath"]: mt["name"] for mt in triton["volumeMounts"]}
        assert vols[mounts["/dev/shm"]]["emptyDir"] == {
            "medium": "Memory",
            "sizeLimit": values["rewardService"]["shmSize"],
        }
        assert {mt["mountPath"]: mt["name"] for mt in init["volumeMounts"]}["/models"] == mounts["/models"]
        assert "emptyDir" in vols[mounts["/models"]]
        # credentials from the object-store Secret, everything else from the settings ConfigMap
        for c in (init, triton):
            refs = {
                e["name"]: e["valueFrom"]["secretKeyRef"]
                for e in c["env"]
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            assert {k: v["key"] for k, v in refs.items()} == {
                "FIRM_S3_ACCESS_KEY": "access-key",
                "FIRM_S3_SECRET_KEY": "secret-key",
            }
            assert c["envFrom"] == [{"configMapRef": {"name": "firm-settings"}}]


@pytest.mark.parametrize("name", RENDERS)
def test_each_reward_service_has_a_candidate_deployment_hardened_like_it(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    """The safe rollout's bench (firm/launch/reward_service.py): per reward model `<reward>-candidate`, 0 replicas,
    a pod that is the reward pod (security, placement, resources, pull secrets, volumes, tritonserver) but for its
    init container, which stages incumbent + candidate from the annotations the deploy step sets; a gRPC Service of
    its own, and neither Service selects the other's pods."""
    objs = rendered[name]
    deployments, services = by_kind(objs, "Deployment"), by_kind(objs, "Service")
    for m in merged_values(name)["rewardService"]["models"]:
        reward, cand = (
            deployments[f"firm-reward-{m['name']}"],
            deployments[f"firm-reward-{m['name']}-candidate"],
        )
        assert cand["spec"]["replicas"] == 0 and cand["spec"]["strategy"] == {"type": "Recreate"}
        pod, rpod = cand["spec"]["template"], reward["spec"]["template"]
        check_pod_hardening(f"Deployment/{cand['metadata']['name']}", pod)
        same = {k: v for k, v in pod["spec"].items() if k != "initContainers"}
        assert same == {k: v for k, v in rpod["spec"].items() if k != "initContainers"}
        (init,), (rinit,) = pod["spec"]["initContainers"], rpod["spec"]["initContainers"]
        for key in ("image", "imagePullPolicy", "securityContext", "resources", "envFrom", "volumeMounts"):
            assert init[key] == rinit[key], key
        assert init["command"] == [
            "firmctl", "serve", "stage-rollout", "--incumbent=$(FIRM_INCUMBENT_REPOSITORY)",
            "--candidate=$(FIRM_CANDIDATE_REPOSITORY)", "--dir=/models/repo",
        ]  # fmt: skip
        env = {e["name"]: e for e in init["env"]}
        for var, ann in (
            ("FIRM_INCUMBENT_REPOSITORY", "incumbent"),
            ("FIRM_CANDIDATE_REPOSITORY", "candidate"),
        ):
            field = env[var]["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == f"metadata.annotations['firm.dev/{ann}-repository']"
            assert pod["metadata"]["annotations"][f"firm.dev/{ann}-repository"] == ""
        assert env["FIRM_HOME"]["value"].startswith(
            "/models/"
        )  # the fetch cache beside the repository: hard links
        svc, rsvc = services[cand["metadata"]["name"]], services[reward["metadata"]["name"]]
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 8001}
        assert selects(svc["spec"]["selector"], pod["metadata"]["labels"])
        assert not selects(svc["spec"]["selector"], rpod["metadata"]["labels"])
        assert not selects(rsvc["spec"]["selector"], pod["metadata"]["labels"]), (
            "RL traffic would reach the bench"
        )
        assert not selects(reward["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])


@pytest.mark.parametrize("name", RENDERS)
def test_reward_pods_land_on_their_node_pool_with_its_gpus(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    values = merged_values(name)
    deployments = by_kind(rendered[name], "Deployment")
    for m in values["rewardService"]["models"]:
        pool = values["nodePools"][m["pool"]]
        spec = deployments[f"firm-reward-{m['name']}"]["spec"]["template"]["spec"]
        selector = dict(pool["nodeSelector"])
        if pool["acceleratorLabel"]:
            selector[pool["acceleratorLabel"]] = pool["acceleratorType"]
        assert spec.get("nodeSelector", {}) == selector
        assert spec.get("tolerations", []) == pool["tolerations"]
        res = spec["containers"][0]["resources"]
        gpu = pool["gpuResource"]
        if m["gpus"]:
            assert res["requests"][gpu] == res["limits"][gpu] == str(m["gpus"])
            assert "--allow-gpu-metrics=true" in spec["containers"][0]["args"]
        else:
            assert gpu not in res["requests"] and gpu not in res["limits"]
            assert "--allow-gpu-metrics=false" in spec["containers"][0]["args"]


def test_gpu_values_add_queue_autoscaling_service_monitor_and_disruption_budgets(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["gpu-values"]
    deployments = {n: d for n, d in by_kind(objs, "Deployment").items() if not n.endswith("-candidate")}
    pods = {n: d["spec"]["template"] for n, d in deployments.items()}
    hpas = by_kind(objs, "HorizontalPodAutoscaler")
    assert set(hpas) == set(deployments) == {"firm-reward-edit", "firm-reward-gen"}
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        (metric,) = hpa["spec"]["metrics"]
        assert (
            metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "nv_inference_queue_duration_us"
        )
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] == 8
        assert "replicas" not in deployments[name]["spec"]  # the HPA owns it
    pdbs = by_kind(objs, "PodDisruptionBudget")
    assert set(pdbs) == set(deployments)
    for name, pdb in pdbs.items():
        assert pdb["spec"]["maxUnavailable"] == 1
        assert selects(pdb["spec"]["selector"]["matchLabels"], pods[name]["metadata"]["labels"])
        assert not any(
            selects(pdb["spec"]["selector"]["matchLabels"], p["metadata"]["labels"])
            for n, p in pods.items()
            if n != name
        )
    (sm,) = by_kind(objs, "ServiceMonitor").values()
    assert (
        sm["apiVersion"] == "monitoring.coreos.com/v1"
        and sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    )
    services = [
        s
        for s in by_kind(objs, "Service").values()
        if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in services} == set(deployments)
    assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in services)
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    # the second pool of this file: 2 GPUs per pod, its tolerations (with tolerationSeconds) and pull secrets
    gen = pods["firm-reward-gen"]["spec"]
    assert gen["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {
        "key": "example.com/spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    } in gen["tolerations"]
    assert gen["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert gen["containers"][0]["image"] == "registry.example.com/ml/firm-triton-vllm:0.1.0"


def test_default_values_keep_optional_objects_off(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {o["kind"] for o in rendered["default"]}
    assert not kinds & {"HorizontalPodAutoscaler", "ServiceMonitor", "PodDisruptionBudget"}
    assert "firm-pipelines-upload" not in by_kind(rendered["default"], "Job")


# ------------------------------------------------------------------------------------------------ object store


def _secret_refs(objs: list[dict[str, Any]]) -> set[str]:
    return {
        e["valueFrom"]["secretKeyRef"]["name"]
        for _, t in pod_templates(objs)
        for c in containers(t)
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_bundled_minio_gets_generated_credentials_shared_with_firm_pods(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["default"]
    secret = by_kind(objs, "Secret")["firm-object-store"]
    assert set(secret["data"]) == {"access-key", "secret-key"}
    import base64

    assert len(base64.b64decode(secret["data"]["secret-key"])) >= 32
    assert _secret_refs(objs) == {"firm-object-store"}
    sts = by_kind(objs, "StatefulSet")["firm-minio"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "200Gi"
    image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", image), image
    svc = by_kind(objs, "Service")["firm-minio"]
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"api": 9000}
    settings = by_kind(objs, "ConfigMap")["firm-settings"]["data"]
    assert (
        settings["FIRM_S3_ENDPOINT"] == "firm-minio.firm.svc.cluster.local:9000"
        and settings["FIRM_S3_SECURE"] == "false"
    )


def test_the_generated_secret_is_looked_up_to_survive_upgrades() -> None:
    text = (CHART / "templates" / "object-store-secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text and "randAlphaNum" in text


def test_external_s3_uses_the_existing_secret_and_runs_no_minio(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["external-s3-values"]
    assert not by_kind(objs, "StatefulSet") and not by_kind(objs, "Secret")
    assert _secret_refs(objs) == {"firm-s3-credentials"}
    data = by_kind(objs, "ConfigMap")["firm-settings"]["data"]
    assert data["FIRM_S3_ENDPOINT"] == "s3.eu-central-1.amazonaws.com:443"
    assert data["FIRM_S3_SECURE"] == "true" and data["FIRM_S3_REGION"] == "eu-central-1"
    assert (
        data["FIRM_STORE_URI"] == "s3://acme-firm-datasets"
        and data["FIRM_MODELS_BUCKET"] == "acme-firm-models"
    )


def test_minio_existing_secret_is_used_by_minio_and_firm_pods(helm: Helm, write_values) -> None:
    objs = objects(helm.template(write_values({"minio": {"auth": {"existingSecret": "my-minio-root"}}})))
    assert not by_kind(objs, "Secret")
    assert _secret_refs(objs) == {"my-minio-root"}


def test_storage_init_hook_creates_the_buckets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = by_kind(rendered["default"], "Job")["firm-storage-init"]
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "post-install,post-upgrade"
    assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["firmctl", "storage", "init"]
    assert c["image"] == "ghcr.io/firm-platform/firm-pipeline:0.1.0"


def test_pipeline_upload_job_runs_firmctl_pipeline_upload(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = by_kind(rendered["gpu-values"], "Job")["firm-pipelines-upload"]
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["command"][:5] == ["firmctl", "pipeline", "upload", "--host", VALUES["pipelines"]["kfpHost"]]
    assert spec["serviceAccountName"] == "firm-pipeline-runner"
    (token,) = [v for v in spec["volumes"] if v["name"] == "kfp-token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"


def test_the_chart_runs_only_firmctl_commands_that_exist() -> None:
    """The commands the chart's containers run (storage fetch/init, pipeline upload) are real firmctl commands."""
    from typer.testing import CliRunner

    from firm.cli.main import app

    for cmd in (
        ["storage", "fetch"],
        ["storage", "init"],
        ["pipeline", "upload"],
        ["serve", "stage-rollout"],
    ):
        result = CliRunner().invoke(app, [*cmd, "--help"])
        assert result.exit_code == 0, f"firmctl {' '.join(cmd)}: {result.output}"
    fetch = CliRunner().invoke(app, ["storage", "fetch", "--help"]).output
    assert "sha256" in fetch  # it verifies what it downloads


# ------------------------------------------------------------------------------------------------ RBAC


@pytest.mark.parametrize("name", RENDERS)
def test_pipeline_runner_role_grants_exactly_what_pipelines_need(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    """The rules, spelled out (tests/deploy/test_cluster.py checks them against the table of API calls)."""
    objs = rendered[name]
    namespaces = merged_values(name)["pipelines"]["namespaces"] or ["firm"]
    roles = [o for o in objs if o["kind"] == "Role"]
    rewards = sorted(by_kind(objs, "Deployment"))
    runners = [r for r in roles if r["metadata"]["name"] == "firm-pipeline-runner"]
    assert sorted(r["metadata"]["namespace"] for r in runners) == sorted(namespaces)
    backend = merged_values(name)["training"]["backend"]
    jobs = {
        "apiGroups": ["kubeflow.org"],
        "resources": ["pytorchjobs"],
        "verbs": ["create", "get", "list", "delete"],
    }
    trainjobs = {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
                 "verbs": ["create", "get", "list", "delete"]}  # fmt: skip
    training = {"pytorchjob": [jobs], "trainjob": [trainjobs], "auto": [jobs, trainjobs]}[backend]
    for role in runners:
        assert role["rules"] == [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": ["kfp-launcher"],
                "verbs": ["get"],
            },
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["mlpipeline-minio-artifact"],
                "verbs": ["get"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
            {"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["get"]},
            {
                "apiGroups": ["argoproj.io"],
                "resources": ["workflowtaskresults"],
                "verbs": ["create", "patch"],
            },
            *training,
        ]
    (deployer,) = [r for r in roles if r["metadata"]["name"] == "firm-reward-deployer"]
    assert deployer["metadata"]["namespace"] == "firm"
    assert deployer["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": rewards,
            "verbs": ["get", "patch"],
        }
    ]
    bindings = {
        (b["metadata"]["namespace"], b["metadata"]["name"]): b for b in objs if b["kind"] == "RoleBinding"
    }
    for ns in namespaces:
        binding = bindings[(ns, "firm-pipeline-runner")]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "firm-pipeline-runner",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "firm-pipeline-runner", "namespace": ns}
        ]
    assert bindings[("firm", "firm-reward-deployer")]["subjects"] == [
        {"kind": "ServiceAccount", "name": "firm-pipeline-runner", "namespace": ns} for ns in namespaces
    ]
    sas = by_kind(objs, "ServiceAccount")
    assert sas["firm-trainer"]["automountServiceAccountToken"] is False
    assert sas["firm-workload"]["automountServiceAccountToken"] is False
    assert set(sas) == {"firm-trainer", "firm-pipeline-runner", "firm-workload"}


# ------------------------------------------------------------------------------------------------ NetworkPolicies


def _firm_job_labels() -> dict[str, str]:
    """The labels FIRM's own render gives training pods (firm.launch.render.labels)."""
    from firm.launch.render import labels
    from firm.launch.spec import load_job_spec, resolve_job
    from tests.deploy.render_manifests import SPECS, default_settings

    with default_settings():
        return labels(resolve_job(load_job_spec(SPECS / "critic-sft-tiny-cpu.yaml"), "pytorchjob"))


def test_network_policies_admit_reward_clients_firm_jobs_and_monitoring_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["default"]
    pols = by_kind(objs, "NetworkPolicy")
    pods = dict(pod_templates(objs))
    job_labels = _firm_job_labels()

    reward = pols["firm-reward"]
    targets = [
        n
        for n, p in pods.items()
        if selects(reward["spec"]["podSelector"]["matchLabels"], p["metadata"]["labels"])
    ]
    assert sorted(targets) == ["Deployment/firm-reward-edit", "Deployment/firm-reward-gen"]
    serve, metrics = reward["spec"]["ingress"]
    assert {p["port"] for p in serve["ports"]} == {"http", "grpc"}
    client = {"firm.dev/reward-client": "true"}
    assert {"podSelector": {"matchLabels": client}} in serve["from"]
    assert {"namespaceSelector": {"matchLabels": client}} in serve["from"]
    # FIRM's training pods (the RL trainer scores through the service) are admitted by their render labels
    assert any(
        selects(peer.get("podSelector", {}).get("matchLabels", {"x": "y"}), job_labels)
        for peer in serve["from"]
    )
    assert metrics == {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"port": "metrics", "protocol": "TCP"}],
    }
    for t in targets:
        assert {"http", "grpc", "metrics"} <= named_ports(pods[t])
    # the candidates (the safe rollout's bench) are admitted exactly like the reward pods
    bench = pols["firm-reward-candidate"]
    assert bench["spec"]["ingress"] == reward["spec"]["ingress"]
    assert sorted(
        n
        for n, p in pods.items()
        if selects(bench["spec"]["podSelector"]["matchLabels"], p["metadata"]["labels"])
    ) == ["Deployment/firm-reward-edit-candidate", "Deployment/firm-reward-gen-candidate"]

    minio = pols["firm-minio"]
    assert [
        n
        for n, p in pods.items()
        if selects(minio["spec"]["podSelector"]["matchLabels"], p["metadata"]["labels"])
    ] == ["StatefulSet/firm-minio"]
    (rule,) = minio["spec"]["ingress"]
    peers = [p["podSelector"]["matchLabels"] for p in rule["from"]]
    admitted = lambda labels: any(selects(peer, labels) for peer in peers)  # noqa: E731
    assert admitted(job_labels), "FIRM's training pods cannot reach MinIO"
    for n, p in pods.items():
        assert admitted(p["metadata"]["labels"]), f"{n} cannot reach MinIO"
    assert not admitted({"app.kubernetes.io/name": "something-else"})
    assert [p["port"] for p in rule["ports"]] == ["api"]

    jobs = pols["firm-jobs"]
    assert jobs["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in jobs["spec"]
    assert selects(
        jobs["spec"]["podSelector"]["matchLabels"], pods["Job/firm-storage-init"]["metadata"]["labels"]
    )


# ------------------------------------------------------------------------------------------------ values schema


def _lint_with(helm: Helm, write_values, values: dict[str, Any]) -> str:
    run = helm("lint", "--strict", CHART, "-f", write_values(values), check=False)
    assert run.rc != 0, f"helm lint accepted {values}"
    return run.text


_MODEL = {
    "name": "edit",
    "repository": "s3://firm-models/x",
    "pool": "cpu",
    "gpus": 0,
    "replicas": 1,
    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
}


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"rewardService": {"models": [{**_MODEL, "gpus": "two"}]}}, "/rewardService/models/0/gpus"),
        ({"minio": {"enabled": "yes"}}, "/minio/enabled"),
        ({"nodePools": {"cpu": {"gpusPerNode": "8"}}}, "/nodePools/cpu/gpusPerNode"),
        ({"rewardService": {"service": {"ports": {"grpc": "8001"}}}}, "/rewardService/service/ports/grpc"),
        ({"nodePools": {"cpu": {"jobResources": {"memory": "lots"}}}}, "/nodePools/cpu/jobResources/memory"),
    ],
    ids=["gpus", "minio.enabled", "gpusPerNode", "grpc-port", "jobResources.memory"],
)
def test_schema_rejects_wrong_types(helm: Helm, write_values, values: dict[str, Any], where: str) -> None:
    out = _lint_with(helm, write_values, values)
    assert where in out and "want" in out, out


@pytest.mark.parametrize(
    ("values", "where", "key"),
    [
        ({"minio": {"persistence": {"sizee": "1Gi"}}}, "/minio/persistence", "sizee"),
        ({"rewardServic": {}}, "at ''", "rewardServic"),
        ({"rewardService": {"models": [{**_MODEL, "gpu": 1}]}}, "/rewardService/models/0", "gpu"),
        ({"nodePools": {"cpu": {"nodeSelectors": {}}}}, "/nodePools/cpu", "nodeSelectors"),
        ({"nodePools": {"cpu": {"jobResources": {"shm": "1Gi"}}}}, "/nodePools/cpu/jobResources", "shm"),
    ],
    ids=["minio.persistence", "top-level", "model", "pool", "jobResources"],
)
def test_schema_rejects_unknown_keys(
    helm: Helm, write_values, values: dict[str, Any], where: str, key: str
) -> None:
    out = _lint_with(helm, write_values, values)
    assert where in out and f"'{key}' not allowed" in out, out


@pytest.mark.parametrize(
    ("values", "field"),
    [
        (
            {"rewardService": {"models": [{k: v for k, v in _MODEL.items() if k != "repository"}]}},
            "'repository'",
        ),
        ({"rewardService": {"models": [{k: v for k, v in _MODEL.items() if k != "pool"}]}}, "'pool'"),
        ({"minio": {"enabled": False}}, "/objectStore/existingSecret"),
        (
            {"minio": {"enabled": False}, "objectStore": {"existingSecret": "s3-creds"}},
            "/objectStore/endpoint",
        ),
    ],
    ids=["model.repository", "model.pool", "external-s3-secret", "external-s3-endpoint"],
)
def test_schema_rejects_missing_required_values(
    helm: Helm, write_values, values: dict[str, Any], field: str
) -> None:
    out = _lint_with(helm, write_values, values)
    assert field in out, out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"rewardService": {"models": [{**_MODEL, "pool": "gpu-a100"}]}},
            'rewardService.models[0].pool: unknown node pool "gpu-a100"',
        ),
        (
            {"rewardService": {"models": [{**_MODEL, "pool": "gpu-h100", "gpus": 9}]}},
            "rewardService.models[0].gpus: 9 GPUs per pod",
        ),
        (
            {"rewardService": {"models": [_MODEL, _MODEL]}},
            'rewardService.models[1].name: "edit" is used twice',
        ),
        (
            {"nodePools": {"gpu-h100": {"acceleratorType": "NVIDIA-H100-80GB-HBM3"}}},
            "nodePools.gpu-h100: acceleratorLabel and acceleratorType",
        ),
        ({"pipelines": {"gpuPool": "gpu-a100"}}, 'pipelines.gpuPool: unknown node pool "gpu-a100"'),
        (
            {"settings": {"extraEnv": {"FIRM_NAMESPACE": "x"}}},
            "settings.extraEnv.FIRM_NAMESPACE: set by the chart",
        ),
        (
            {"settings": {"extraEnv": {"FIRM_S3_SECRET_KEY": "x"}}},
            "settings.extraEnv.FIRM_S3_SECRET_KEY: credentials",
        ),
    ],
    ids=[
        "unknown-pool",
        "too-many-gpus",
        "duplicate-model",
        "accelerator-pair",
        "pipeline-pool",
        "extra-env",
        "secret-env",
    ],
)
def test_template_checks_name_the_field(
    helm: Helm, write_values, values: dict[str, Any], message: str
) -> None:
    run = helm("template", "firm", CHART, "-f", write_values(values), check=False)
    assert run.rc != 0 and message in run.text, run.text


# Objects whose members are Kubernetes API types passed through verbatim (the API server validates them).
_PASSTHROUGH = re.compile(r"^(global|rewardService\.affinity\.\w+|minio\.networkPolicy\.extraFrom\[\]\.\w+)$")


def _schema_objects(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if node.get("type") == "object":
        out.append((path, node))
    for key, sub in node.get("properties", {}).items():
        out += _schema_objects(sub, f"{path}.{key}" if path else key)
    if isinstance(node.get("additionalProperties"), dict):
        out += _schema_objects(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        out += _schema_objects(node["items"], f"{path}[]")
    return out


def test_schema_closes_every_object() -> None:
    """Every object level either forbids unknown keys or types its free-form keys (maps of labels, pools)."""
    open_objects = [
        path
        for path, node in _schema_objects(SCHEMA)
        if node.get("additionalProperties") is not False
        and not isinstance(node.get("additionalProperties"), dict)
        and not _PASSTHROUGH.match(path)
    ]
    assert open_objects == []
    assert SCHEMA["additionalProperties"] is False


def _leaf_paths(node: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Documented leaves of values.yaml: scalars, lists, and free-form maps (label maps) as a whole."""
    if isinstance(node, dict) and node and schema.get("type") == "object":
        out = []
        for key, value in node.items():
            sub = schema.get("properties", {}).get(key) or schema.get("additionalProperties")
            if (
                isinstance(sub, dict)
                and sub.get("type") == "array"
                and sub.get("items", {}).get("type") == "object"
            ):
                out += _leaf_paths(value, sub, f"{path}.{key}" if path else key)
            elif (
                not isinstance(sub, dict)
                or sub.get("type") != "object"
                or not (
                    "properties" in sub
                    or (
                        isinstance(sub.get("additionalProperties"), dict)
                        and sub["additionalProperties"].get("type") == "object"
                    )
                )
            ):
                out.append(f"{path}.{key}" if path else key)
            else:
                out += _leaf_paths(value, sub, f"{path}.{key}" if path else key)
        return out
    if isinstance(node, list) and node and isinstance(node[0], dict) and "items" in schema:
        return [p for i, v in enumerate(node) for p in _leaf_paths(v, schema["items"], f"{path}[{i}]")]
    return [path]


def test_every_value_is_documented_with_a_param_line() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) \S", text, flags=re.M))
    leaves = {re.sub(r"(tolerations)\[\d+\].*", r"\1", p) for p in _leaf_paths(VALUES, SCHEMA)}
    assert sorted(leaves - documented) == []
    assert sorted(documented - leaves) == []


def test_kubernetes_validate_cli_agrees(helm: Helm, tmp_path: Path) -> None:
    """The project's `kubernetes-validate --strict` command on the rendered chart (the tests above use its API)."""
    import subprocess
    import sys

    manifest = tmp_path / "chart.yaml"
    manifest.write_text(helm.template())
    exe = Path(sys.executable).parent / "kubernetes-validate"
    for version in K8S_VERSIONS:
        proc = subprocess.run(
            [str(exe), "--strict", "-k", version, str(manifest)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
        assert "WARN" not in proc.stdout and proc.stdout.count("passed for resource") >= 10, proc.stdout
