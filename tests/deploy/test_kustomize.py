"""k8s/: the generated manifests are up to date (PyTorchJobs from FIRM's own render, platform objects from the
chart), `kubectl kustomize` renders every overlay offline, and what it renders validates (Kubernetes schemas for
built-in kinds, the Training Operator's CRD schema for PyTorchJobs) and matches the chart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import OVERLAY_DIRS, by_kind, load_settings, objects
from tests.deploy.k8s_checks import (
    K8S_VERSIONS,
    check_pod_hardening,
    is_custom,
    pod_templates,
    validate_builtin,
)
from tests.deploy.render_manifests import (
    BASE,
    DEV_VALUES,
    REPO,
    SPECS,
    chart_documents,
    expected_files,
    helm_template,
    stale_files,
)
from tests.fixtures.crd import validate_pytorchjob

OVERLAYS = [p.name for p in OVERLAY_DIRS]


@pytest.fixture(scope="module")
def expected(kube_bins: tuple[Path, Path]) -> dict[Path, str]:
    return expected_files()


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev-cpu", "prod-gpu"} <= set(OVERLAYS)


def test_generated_manifests_are_up_to_date(expected: dict[Path, str]) -> None:
    stale = stale_files(expected)
    assert stale == [], f"regenerate with `python -m tests.deploy.render_manifests`: {stale}"
    specs = sorted(p.stem for p in SPECS.glob("*.yaml"))
    jobs = sorted(p.stem for p in (BASE / "jobs").glob("*/*.yaml") if p.name != "kustomization.yaml")
    assert jobs == specs


def test_the_staleness_check_notices_an_edit(expected: dict[Path, str]) -> None:
    path = BASE / "jobs" / "cpu" / "critic-sft-tiny-cpu.yaml"
    edited = {**expected, path: expected[path].replace("nprocPerNode: '2'", "nprocPerNode: '3'")}
    assert stale_files(edited) == ["k8s/base/jobs/cpu/critic-sft-tiny-cpu.yaml"]


def test_generated_jobs_are_firmctl_job_render_output() -> None:
    """The checked-in job is exactly what `firmctl job render` prints under default settings."""
    from typer.testing import CliRunner

    from firm.cli.main import app
    from tests.deploy.render_manifests import default_settings

    path = BASE / "jobs" / "cpu" / "critic-sft-tiny-cpu.yaml"
    with default_settings():
        result = CliRunner().invoke(
            app, ["job", "render", "--config", str(SPECS / "critic-sft-tiny-cpu.yaml")]
        )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == yaml.safe_load(path.read_text())


def test_base_alone_starts_no_training_job(kustomize: Callable[[Path], str]) -> None:
    objs = objects(kustomize(BASE))
    assert not by_kind(objs, "PyTorchJob")
    assert set(by_kind(objs, "Deployment")) == {"firm-reward-edit", "firm-reward-edit-candidate"}
    assert set(by_kind(objs, "Service")) == {
        "firm-reward-edit",
        "firm-reward-edit-headless",
        "firm-reward-edit-candidate",
    }
    assert "firm" in by_kind(objs, "Namespace")


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_renders_offline_and_every_object_validates(
    overlays: dict[str, list[dict[str, Any]]], overlay: str, version: str
) -> None:
    objs = overlays[overlay]
    jobs = by_kind(objs, "PyTorchJob")
    assert jobs, f"{overlay} opts into no training jobs"
    for obj in objs:
        if obj["kind"] == "PyTorchJob":
            validate_pytorchjob(obj)
        else:
            assert not is_custom(obj), obj["kind"]
            validate_builtin(obj, version)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "firm", obj["metadata"]["name"]


def test_the_crd_check_catches_a_bad_pytorchjob(overlays: dict[str, list[dict[str, Any]]]) -> None:
    import copy

    import jsonschema

    job = copy.deepcopy(next(iter(by_kind(overlays["dev-cpu"], "PyTorchJob").values())))
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_pytorchjob(job)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_pods_are_hardened_and_bounded(
    overlays: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    pods = dict(pod_templates(overlays[overlay]))
    assert any(n.startswith("PyTorchJob/") for n in pods)
    for name, template in pods.items():
        check_pod_hardening(name, template)


def test_overlays_pick_the_jobs_their_nodes_can_run(overlays: dict[str, list[dict[str, Any]]]) -> None:
    dev = by_kind(overlays["dev-cpu"], "PyTorchJob")
    prod = by_kind(overlays["prod-gpu"], "PyTorchJob")
    assert set(dev) == {"critic-sft-tiny-cpu"}
    assert set(prod) == {p.stem for p in SPECS.glob("*.yaml")} - set(dev)
    for job in prod.values():
        pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_dev_cpu_reward_service_is_what_the_chart_renders_for_a_cpu_model(
    overlays: dict[str, list[dict[str, Any]]],
) -> None:
    chart = {(o["kind"], o["metadata"]["name"]): o for _, o in chart_documents(helm_template(DEV_VALUES))}
    for name in ("firm-reward-edit", "firm-reward-edit-candidate"):
        want = chart[("Deployment", name)]
        got = by_kind(overlays["dev-cpu"], "Deployment")[name]
        assert got["spec"] == want["spec"], name
        assert "nvidia.com/gpu" not in str(got["spec"]["template"]["spec"]["containers"][0]["resources"])


def test_prod_gpu_role_covers_exactly_its_reward_deployments(
    overlays: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, objs in overlays.items():
        role = by_kind(objs, "Role")["firm-reward-deployer"]
        (apps,) = [r for r in role["rules"] if r["apiGroups"] == ["apps"]]
        assert sorted(apps["resourceNames"]) == sorted(by_kind(objs, "Deployment")), overlay
        runner = by_kind(objs, "Role")["firm-pipeline-runner"]
        assert not [r for r in runner["rules"] if r["apiGroups"] == ["apps"]], overlay
    prod = overlays["prod-gpu"]
    assert by_kind(prod, "Deployment")["firm-reward-edit"]["spec"]["replicas"] == 2
    assert set(by_kind(prod, "PodDisruptionBudget")) == {"firm-reward-edit", "firm-reward-gen"}


def test_prod_gpu_does_not_start_every_gpu_job_at_once(overlays: dict[str, list[dict[str, Any]]]) -> None:
    """Applying the prod overlay creates the example GPU jobs suspended; they start one at a time."""
    jobs = by_kind(overlays["prod-gpu"], "PyTorchJob")
    assert len(jobs) > 1
    assert all(j["spec"]["runPolicy"]["suspend"] is True for j in jobs.values())
    # dev-cpu runs its single small job at once
    assert all(
        not j["spec"]["runPolicy"].get("suspend") for j in by_kind(overlays["dev-cpu"], "PyTorchJob").values()
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_settings_load_into_firm_settings(
    overlays: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objs = overlays[overlay]
    settings = load_settings(by_kind(objs, "ConfigMap")["firm-settings"]["data"], monkeypatch, tmp_path)
    assert settings.cluster.settings_configmap == "firm-settings"
    assert settings.cluster.service_account in by_kind(objs, "ServiceAccount")
    if overlay == "dev-cpu":
        # the settings point at the MinIO this overlay runs
        svc = by_kind(objs, "Service")["firm-minio"]
        assert settings.s3_endpoint == f"firm-minio.firm.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
        assert settings.s3_secure is False
    else:
        assert settings.s3_secure is True and not by_kind(objs, "StatefulSet")


def test_kustomizations_reference_existing_files() -> None:
    for kfile in REPO.glob("k8s/**/kustomization.yaml"):
        data = yaml.safe_load(kfile.read_text())
        refs = [*data.get("resources", []), *data.get("components", [])]
        refs += [p["path"] for p in data.get("patches", []) if "path" in p]
        for ref in refs:
            assert (kfile.parent / ref).exists(), f"{kfile.relative_to(REPO)}: {ref} does not exist"
