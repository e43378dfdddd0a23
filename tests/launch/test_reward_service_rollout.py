"""Deploying the reward service on Kubernetes = rolling out the chart's Deployment to a new repository (a pod-template
annotation), then waiting for the rollout — through the real kubernetes client against the local API endpoint."""

from __future__ import annotations

import pytest

from firm.launch.backend import JobError
from firm.launch.reward_service import ANNOTATION, deploy_reward_service, stop_reward_service
from tests.launch.k8s_api import FakeKubeAPI

REPO_URI = "s3://firm-models/runs/abc/triton-edit"


def test_deploy_patches_the_annotation_and_waits_for_the_rollout(kube: FakeKubeAPI) -> None:
    kube.add_deployment("firm", "firm-reward-edit", replicas=2)
    ep = deploy_reward_service(
        REPO_URI, target="kubernetes", name="run-1", model="edit", poll=0.01, timeout=10
    )
    assert ep.grpc == "firm-reward-edit.firm.svc:8001" and ep.target == "kubernetes"
    patches = [body for method, path, body in kube.requests if method == "PATCH"]
    assert len(patches) == 1
    annotations = patches[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[ANNOTATION] == REPO_URI and "firm.dev/deployed-at" in annotations
    gets = [p for m, p, _ in kube.requests if m == "GET" and p.endswith("/deployments/firm-reward-edit")]
    assert len(gets) >= 2, "it must wait until the new generation is rolled out"
    assert stop_reward_service(target="kubernetes", name="run-1") is False  # the chart's service stays up


def test_rollout_errors_say_what_to_check(kube: FakeKubeAPI) -> None:
    with pytest.raises(JobError, match="is the FIRM Helm chart installed with a reward model of that name"):
        deploy_reward_service(REPO_URI, target="kubernetes", name="r", model="gen", poll=0.01, timeout=5)
    kube.add_deployment("firm", "firm-reward-edit")
    kube.stuck_rollouts.add("firm-reward-edit")
    with pytest.raises(JobError, match=r"did not finish rolling out .* within 0\.3 s"):
        deploy_reward_service(REPO_URI, target="kubernetes", name="r", model="edit", poll=0.01, timeout=0.3)
    kube.forbidden.add("firm")
    with pytest.raises(JobError, match="needs get/patch on this Deployment"):
        deploy_reward_service(REPO_URI, target="kubernetes", name="r", model="edit", poll=0.01, timeout=5)


def test_a_deployment_at_zero_replicas_is_scaled_to_one(kube: FakeKubeAPI) -> None:
    kube.add_deployment("firm", "firm-reward-edit", replicas=0)  # as the chart installs it before any critic
    deploy_reward_service(REPO_URI, target="kubernetes", name="r", model="edit", poll=0.01, timeout=10)
    patch = next(body for method, _, body in kube.requests if method == "PATCH")
    assert patch["spec"]["replicas"] == 1
    assert kube.deployments[("firm", "firm-reward-edit")]["status"]["readyReplicas"] == 1
    kube.requests.clear()
    deploy_reward_service(REPO_URI, target="kubernetes", name="r", model="edit", poll=0.01, timeout=10)
    patch = next(body for method, _, body in kube.requests if method == "PATCH")
    assert "replicas" not in patch["spec"], "a running Deployment keeps its replica count (or its HPA's)"


def test_the_reward_namespace_setting_is_where_the_deployment_is_looked_for(
    kube: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from firm.config import get_settings

    kube.deployments.clear()
    kube.add_deployment("firm", "firm-reward-edit", replicas=1)
    monkeypatch.setenv("FIRM_NAMESPACE", "pipelines")  # the deploy step runs in a pipeline namespace
    monkeypatch.setenv("FIRM_CLUSTER__REWARD_NAMESPACE", "firm")  # the chart's release namespace
    get_settings(fresh=True)
    try:
        ep = deploy_reward_service(
            REPO_URI, target="kubernetes", name="r", model="edit", poll=0.01, timeout=10
        )
    finally:
        monkeypatch.delenv("FIRM_CLUSTER__REWARD_NAMESPACE")
        get_settings(fresh=True)
    assert ep.grpc == "firm-reward-edit.firm.svc:8001"
    assert all("/namespaces/firm/" in p for m, p, _ in kube.requests if "deployments" in p)
