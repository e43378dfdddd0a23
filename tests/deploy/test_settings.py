"""The settings ConfigMap the chart writes is what FIRM reads: loaded as environment into `FirmSettings`, it
validates, carries the values' node pools exactly, and names the objects the chart creates — so `firmctl job render`
inside the cluster and the chart agree by construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from firm.errors import ConfigError
from firm.launch.cluster import ClusterSettings, JobResources, NodePool, Toleration
from tests.deploy.conftest import RENDERS, Helm, by_kind, load_settings, merged_values, objects
from tests.deploy.k8s_checks import containers, pod_templates


def pools_from_values(values: dict[str, Any]) -> dict[str, NodePool]:
    """The values' nodePools (camelCase, Kubernetes tolerations) as FIRM's NodePool models."""
    out = {}
    for name, p in values["nodePools"].items():
        out[name] = NodePool(
            description=p.get("description", ""),
            node_selector=p.get("nodeSelector", {}),
            tolerations=[
                Toleration(
                    key=t.get("key"),
                    operator=t.get("operator", "Exists"),
                    value=t.get("value"),
                    effect=t.get("effect"),
                    toleration_seconds=t.get("tolerationSeconds"),
                )
                for t in p.get("tolerations", [])
            ],
            gpu_resource=p.get("gpuResource", "nvidia.com/gpu"),
            gpus_per_node=p.get("gpusPerNode", 0),
            accelerator_label=p.get("acceleratorLabel") or None,
            accelerator_type=p.get("acceleratorType") or None,
            job_resources=JobResources(
                cpu=p.get("jobResources", {}).get("cpu"),
                memory=p.get("jobResources", {}).get("memory"),
                shm_size=p.get("jobResources", {}).get("shmSize"),
            ),
        )
    return out


@pytest.mark.parametrize("name", RENDERS)
def test_settings_configmap_validates_as_firm_settings_with_the_values_pools(
    rendered: dict[str, list[dict[str, Any]]], name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objs = rendered[name]
    values = merged_values(name)
    cm = by_kind(objs, "ConfigMap")["firm-settings"]
    data = cm["data"]
    assert all(isinstance(v, str) for v in data.values())
    settings = load_settings(data, monkeypatch, tmp_path / "home")
    cluster = settings.cluster

    assert cluster.node_pools == pools_from_values(values)
    assert settings.namespace == "firm"
    buckets = values["objectStore"]["buckets"]
    assert settings.bucket_uris() == {k: f"s3://{v}" for k, v in buckets.items()}
    assert cluster.checkpoints_uri == f"s3://{buckets['checkpoints']}"
    assert cluster.job_backend == values["training"]["backend"]  # the chart's training.backend reaches FIRM
    # every name in the settings is an object the chart created (or the Secret it was told exists)
    assert cluster.settings_configmap == cm["metadata"]["name"]
    sas = by_kind(objs, "ServiceAccount")
    assert (
        cluster.service_account in sas
        and sas[cluster.service_account]["automountServiceAccountToken"] is False
    )
    assert cluster.pipeline_service_account in sas
    deployments = by_kind(objs, "Deployment")
    for m in values["rewardService"]["models"]:
        assert cluster.reward_deployment.format(name=m["name"]) in deployments
    assert cluster.reward_grpc_port == values["rewardService"]["service"]["ports"]["grpc"]
    assert {cluster.pipeline_cpu_pool, cluster.pipeline_gpu_pool} <= set(cluster.node_pools)
    assert (
        settings.triton_url.split(".", 1)[0] == f"firm-reward-{values['rewardService']['models'][0]['name']}"
    )
    secret_refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for _, t in pod_templates(objs)
        for c in containers(t)
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert cluster.object_store_secret is not None
    assert {cluster.object_store_secret.name} == secret_refs
    assert cluster.object_store_secret.keys == {
        "FIRM_S3_ACCESS_KEY": "access-key",
        "FIRM_S3_SECRET_KEY": "secret-key",
    }
    images = {c["image"] for _, t in pod_templates(objs) for c in containers(t) if "minio" not in c["image"]}
    assert images <= {cluster.triton_image, cluster.pipeline_image}
    if values["hfToken"]["existingSecret"]:
        assert (
            cluster.hf_token_secret is not None
            and cluster.hf_token_secret.name == values["hfToken"]["existingSecret"]
        )
        assert cluster.hf_token_secret.optional
    if values["minio"]["enabled"]:
        assert (
            settings.s3_endpoint == "firm-minio.firm.svc.cluster.local:9000" and settings.s3_secure is False
        )
    else:
        assert settings.s3_endpoint == values["objectStore"]["endpoint"]
        assert settings.s3_secure is values["objectStore"]["secure"]


def test_default_chart_settings_are_firms_own_defaults(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the release `firm` and default values the chart writes FIRM's defaults: nothing is renamed, and the
    node pools are exactly FIRM's (selectors, accelerator labels, tolerations, job resources) — both select no node
    label a stock cluster lacks. Only the optional Hugging Face Secret (the chart names none unless told) and the
    reward namespace (the chart writes its release namespace, FIRM's default None means that same namespace) are
    written differently."""
    data = by_kind(rendered["default"], "ConfigMap")["firm-settings"]["data"]
    settings = load_settings(data, monkeypatch, tmp_path / "home")
    cluster = settings.cluster
    defaults = ClusterSettings()
    exclude = {"hf_token_secret", "reward_namespace"}
    assert cluster.model_dump(exclude=exclude) == defaults.model_dump(exclude=exclude)
    assert cluster.node_pools == defaults.node_pools
    assert getattr(cluster, "reward_namespace", None) in (None, settings.namespace)
    for pool in cluster.node_pools.values():
        assert pool.node_selector == {} and pool.accelerator_label is None


def test_every_settings_key_is_a_firm_setting(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The ConfigMap holds FirmSettings variables only (a typo would be rejected at pod start) plus NCCL_* transport
    variables for the training pods, and sets every cluster setting but the optional Hugging Face token Secret."""
    from firm.config import settings_env_keys

    known = set(settings_env_keys())
    cluster_keys = {k for k in known if k.startswith("FIRM_CLUSTER__")}
    for name, objs in rendered.items():
        keys = {k for k in by_kind(objs, "ConfigMap")["firm-settings"]["data"] if not k.startswith("NCCL_")}
        assert keys <= known, f"{name}: not FIRM settings: {sorted(keys - known)}"
        assert cluster_keys - keys <= {"FIRM_CLUSTER__HF_TOKEN_SECRET"}, (
            f"{name}: unset: {sorted(cluster_keys - keys)}"
        )
        assert not {"FIRM_S3_ACCESS_KEY", "FIRM_S3_SECRET_KEY"} & keys


def test_a_job_rendered_with_the_chart_settings_uses_the_chart_objects(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`firmctl job render` in a pod of the release: the PyTorchJob references the chart's ConfigMap, trainer
    ServiceAccount and object-store Secret, and lands on the pools the chart defined."""
    from firm.launch.render import build_pytorchjob, to_dict
    from firm.launch.spec import load_job_spec, resolve_job
    from tests.deploy.render_manifests import SPECS
    from tests.fixtures.crd import validate_pytorchjob

    objs = rendered["gpu-values"]
    data = by_kind(objs, "ConfigMap")["firm-settings"]["data"]
    settings = load_settings(data, monkeypatch, tmp_path / "home")
    job = resolve_job(
        load_job_spec(SPECS / "critic-sft-qwen3vl-8b-1x8.yaml", ["pool=gpu-a100", "nodes=2"]),
        "pytorchjob",
        cluster=settings.cluster,
    )
    obj = to_dict(build_pytorchjob(job, "firm"))
    validate_pytorchjob(obj)
    pod = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["serviceAccountName"] in by_kind(objs, "ServiceAccount")
    (c,) = pod["containers"]
    assert c["envFrom"][0]["configMapRef"]["name"] == "firm-settings"
    assert c["image"] == "registry.example.com/ml/firm-trainer:0.1.0"
    assert pod["nodeSelector"] == {
        "cloud.example.com/pool": "a100",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
    }
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"


LONG_NAME = "platform-team-firm-critics-production-europe-1"  # 46 characters: its candidates need 68


@pytest.mark.parametrize(
    ("release", "extra", "prefix"),
    [
        ("ml", (), "ml"),
        ("ml", ("--set", "nameOverride=platform"), "ml-platform"),
        ("ml", ("--set", "fullnameOverride=team-firm"), "team-firm"),
        # a long release name: <reward Deployment>-candidate is over 63 characters, cut by the chart and FIRM alike
        (LONG_NAME, (), LONG_NAME),
    ],
)
def test_names_follow_the_release_and_the_settings_follow_the_names(
    helm: Helm,
    release: str,
    extra: tuple[str, ...],
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from firm.launch.reward_service import candidate_name

    objs = objects(helm.template(release=release, extra=extra))
    rewards = {f"{prefix}-reward-{m}" for m in ("edit", "gen")}
    assert set(by_kind(objs, "Deployment")) == rewards | {candidate_name(r) for r in rewards}
    assert all(len(candidate_name(r)) <= 63 for r in rewards)
    assert set(by_kind(objs, "StatefulSet")) == {f"{prefix}-minio"}
    settings = load_settings(by_kind(objs, "ConfigMap")[f"{prefix}-settings"]["data"], monkeypatch, tmp_path)
    cluster = settings.cluster
    assert cluster.settings_configmap == f"{prefix}-settings"
    assert cluster.service_account == f"{prefix}-trainer"
    assert cluster.pipeline_service_account == f"{prefix}-pipeline-runner"
    assert cluster.reward_deployment.format(name="edit") == f"{prefix}-reward-edit"
    name = candidate_name(f"{prefix}-reward-edit")
    candidate = cluster.reward_candidate_grpc.format(
        candidate=name, deployment=f"{prefix}-reward-edit", namespace="firm", port=8001
    )
    assert candidate == f"{name}.firm.svc:8001" and name in by_kind(objs, "Service")
    assert (
        cluster.object_store_secret is not None
        and cluster.object_store_secret.name == f"{prefix}-object-store"
    )
    assert settings.s3_endpoint == f"{prefix}-minio.firm.svc.cluster.local:9000"


def test_job_resources_of_the_values_reach_the_jobs_a_pipeline_step_launches(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """nodePools.<pool>.jobResources → cluster.node_pools.<pool>.job_resources → a launcher step's job (issue 26,
    A3): before, chart-installed pools had no job limits and a 16Gi /dev/shm."""
    from firm.launch.render import pod_template, to_dict
    from firm.launch.spec import resolve_job, step_job_spec

    data = by_kind(rendered["default"], "ConfigMap")["firm-settings"]["data"]
    cluster = load_settings(data, monkeypatch, tmp_path / "home").cluster
    for pool, recipe in (("cpu", "critic/tiny_cpu"), ("gpu-h100", "critic/qwen3vl_8b_edit_full")):
        want = merged_values("default")["nodePools"][pool]["jobResources"]
        spec = step_job_spec("sft", "run-1", recipe=recipe, overrides=[], pool=pool, nodes=1, nproc_per_node=0,
                             image="")  # fmt: skip
        pod = to_dict(pod_template(resolve_job(spec, "pytorchjob", cluster)))["spec"]
        res = pod["containers"][0]["resources"]
        for side in ("requests", "limits"):
            assert (res[side]["cpu"], res[side]["memory"]) == (want["cpu"], want["memory"])
        (dshm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert dshm["emptyDir"]["sizeLimit"] == want["shmSize"]


def test_values_with_shm_above_memory_give_settings_firm_refuses_in_one_line(
    helm: Helm, write_values, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The schema cannot compare quantities: such values render, and the settings ConfigMap is refused by FIRM (at
    the start of every pod that loads it) with one line naming the pool and the variable."""
    values = {"nodePools": {"cpu": {"jobResources": {"memory": "8Gi", "shmSize": "16Gi"}}}}
    objs = objects(helm.template(write_values(values)))
    data = by_kind(objs, "ConfigMap")["firm-settings"]["data"]
    with pytest.raises(ConfigError) as info:
        load_settings(data, monkeypatch, tmp_path / "home")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(
        "invalid FIRM setting 'cluster.node_pools.cpu.job_resources' (env FIRM_CLUSTER__NODE_POOLS): "
        "job_resources.shm_size 16Gi exceeds job_resources.memory 8Gi"
    ), msg


def test_gang_scheduling_values_reach_the_rendered_jobs(
    helm: Helm, write_values, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """training.gangScheduling.enabled writes FIRM_CLUSTER__GANG_SCHEDULER, which FIRM reads (a pod started with an
    unknown setting would fail) and every PyTorchJob then carries: runPolicy.schedulingPolicy + schedulerName."""
    from firm.launch.render import build_pytorchjob, to_dict
    from firm.launch.spec import load_job_spec, resolve_job
    from tests.deploy.render_manifests import SPECS

    values = {
        "training": {"gangScheduling": {"enabled": True, "schedulerName": "scheduler-plugins-scheduler"}}
    }
    data = by_kind(objects(helm.template(write_values(values))), "ConfigMap")["firm-settings"]["data"]
    cluster = load_settings(data, monkeypatch, tmp_path / "home").cluster
    assert cluster.gang_scheduler == "scheduler-plugins-scheduler"
    job = resolve_job(load_job_spec(SPECS / "rl-sd35m-nft-qma-1x8.yaml"), "pytorchjob", cluster=cluster)
    obj = to_dict(build_pytorchjob(job, "firm"))
    assert obj["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 1}
    pod = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["schedulerName"] == "scheduler-plugins-scheduler"
