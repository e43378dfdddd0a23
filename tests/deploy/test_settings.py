"""The settings ConfigMap the chart writes is what FIRM reads: loaded as environment into `FirmSettings`, it
validates, carries the values' node pools exactly, and names the objects the chart creates — so `firmctl job render`
inside the cluster and the chart agree by construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from firm.launch.cluster import ClusterSettings, NodePool, Toleration
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
    """With the release `firm` and default values the chart writes FIRM's defaults: nothing is renamed. The node
    pools are the exception where FIRM's built-in defaults use NVIDIA GPU-operator labels: the chart's defaults
    must work on a stock cluster, so its pools select by the GPU resource alone (same names, GPUs, tolerations)."""
    data = by_kind(rendered["default"], "ConfigMap")["firm-settings"]["data"]
    cluster = load_settings(data, monkeypatch, tmp_path / "home").cluster
    defaults = ClusterSettings()
    exclude = {"hf_token_secret", "node_pools"}
    assert cluster.model_dump(exclude=exclude) == defaults.model_dump(exclude=exclude)
    assert set(cluster.node_pools) == set(defaults.node_pools)
    for name, pool in cluster.node_pools.items():
        want = defaults.node_pools[name]
        assert (pool.gpus_per_node, pool.gpu_resource, pool.tolerations) == (
            want.gpus_per_node,
            want.gpu_resource,
            want.tolerations,
        )
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


@pytest.mark.parametrize(
    ("release", "extra", "prefix"),
    [
        ("ml", (), "ml"),
        ("ml", ("--set", "nameOverride=platform"), "ml-platform"),
        ("ml", ("--set", "fullnameOverride=team-firm"), "team-firm"),
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
    objs = objects(helm.template(release=release, extra=extra))
    assert set(by_kind(objs, "Deployment")) == {f"{prefix}-reward-edit", f"{prefix}-reward-gen"}
    assert set(by_kind(objs, "StatefulSet")) == {f"{prefix}-minio"}
    settings = load_settings(by_kind(objs, "ConfigMap")[f"{prefix}-settings"]["data"], monkeypatch, tmp_path)
    cluster = settings.cluster
    assert cluster.settings_configmap == f"{prefix}-settings"
    assert cluster.service_account == f"{prefix}-trainer"
    assert cluster.pipeline_service_account == f"{prefix}-pipeline-runner"
    assert cluster.reward_deployment.format(name="edit") == f"{prefix}-reward-edit"
    assert (
        cluster.object_store_secret is not None
        and cluster.object_store_secret.name == f"{prefix}-object-store"
    )
    assert settings.s3_endpoint == f"{prefix}-minio.firm.svc.cluster.local:9000"
