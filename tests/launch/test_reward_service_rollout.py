"""Deploying the reward service on Kubernetes = rolling out the chart's Deployment to a new repository (a pod-template
annotation), then waiting for the rollout — through the real kubernetes client against the local API endpoint."""

from __future__ import annotations

from pathlib import Path

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


# ------------------------------------------------------------------------------------ safe rollout on the cluster
# The chart's candidate Deployment (<reward Deployment>-candidate) is played by one real tritonserver (explicit
# model control) serving a directory that `firmctl serve stage-rollout` — the command of the candidate pod's init
# container — builds from the Deployment's annotations whenever the deploy step scales it to 1; scaling it to 0
# unloads every model. The fake API server holds the Deployments; the deploy step benches through that server.

CANDIDATE_DEPLOYMENT = "firm-reward-edit-candidate"


@pytest.fixture(scope="module")
def critics(
    tmp_path_factory: pytest.TempPathFactory, tiny_critic_dir: Path, formatted_critic_dir: Path
) -> dict[str, str]:
    """An untrained critic (its answers never parse) and a format-taught one, exported as edit repositories, and a
    4-item audit bench with human scores (what tests/serving/test_rollout.py uses)."""
    from firm.bench.synthetic import make_synthetic_bench
    from tests.serving.test_rollout import _export

    root = tmp_path_factory.mktemp("cluster-rollout")
    make_synthetic_bench(root / "audit", 4, seed=3, size=48, n_gen=0, requested=4)
    return {
        "untrained": _export(tiny_critic_dir, root / "untrained"),
        "formatted": _export(formatted_critic_dir, root / "formatted"),
        "audit": str(root / "audit"),
        "pod": str(root / "pod" / "repo"),
    }


class CandidatePod:
    """Stands in for the kubelet running the candidate Deployment's pod on one tritonserver."""

    def __init__(self, server, repo: str) -> None:  # type: ignore[no-untyped-def]
        self.server, self.repo = server, repo
        self.staged: tuple[str, str] | None = None
        self.models: list[str] = []
        self.started = 0

    def stage(self, incumbent: str, candidate: str) -> None:
        import json
        import shutil

        from typer.testing import CliRunner

        from firm.cli.main import app

        if self.staged != (incumbent, candidate):
            shutil.rmtree(self.repo, ignore_errors=True)
            run = CliRunner().invoke(
                app,
                ["serve", "stage-rollout", f"--incumbent={incumbent}", f"--candidate={candidate}", f"--dir={self.repo}"],
            )  # fmt: skip
            assert run.exit_code == 0, run.output
            self.models = json.loads(run.stdout)
            self.staged = (incumbent, candidate)

    def __call__(self, ns: str, name: str, dep: dict) -> None:  # type: ignore[type-arg]
        from firm.launch import rollout as ro
        from firm.launch.reward_service import CANDIDATE, INCUMBENT

        if name != CANDIDATE_DEPLOYMENT:
            return
        http = self.server.http_url
        if dep["spec"]["replicas"]:
            from concurrent.futures import ThreadPoolExecutor

            ann = dep["spec"]["template"]["metadata"]["annotations"]
            self.stage(ann[INCUMBENT], ann[CANDIDATE])
            # the pod is ready once every model is; like a pod's tritonserver at start, the two python engines
            # load side by side, then the ensembles over them
            engines = [m for m in self.models if m.startswith(ro.ENGINE_MODEL)]
            with ThreadPoolExecutor(len(engines)) as pool:
                list(pool.map(lambda m: ro._load_all(http, [m], 300), engines))
            ro._load_all(http, [m for m in self.models if m not in engines], 300)
            self.started += 1
        else:
            ro._unload_all(http, self.models, 60)

    def engine_loads(self) -> dict[str, int]:
        """How often tritonserver loaded each python engine (a staged repository's engines are precompiled, so the
        ensembles loaded over them do not find them changed and load them again)."""
        log = self.server.log_path.read_text(errors="replace")
        return {m: log.count(f'"loading: {m}:1"') for m in ("firm_engine", "firm_engine_candidate")}


@pytest.fixture(scope="module")
def candidate_pod(critics: dict[str, str]):  # type: ignore[no-untyped-def]
    from firm.serving.server import TritonServer

    pod = CandidatePod(None, critics["pod"])
    pod.stage(critics["untrained"], critics["formatted"])  # a repository to start on; nothing loaded yet
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIRM_HOME", str(Path(critics["pod"]).parent / "home"))  # the server's backend directory
        server = TritonServer(
            critics["pod"], extra_args=["--model-control-mode=explicit"], startup_timeout=300
        )
        pod.server = server.start()
    try:
        yield pod
    finally:
        server.stop()


@pytest.fixture
def cluster(kube: FakeKubeAPI, candidate_pod: CandidatePod, monkeypatch: pytest.MonkeyPatch) -> FakeKubeAPI:
    from firm.config import get_settings

    kube.add_deployment("firm", CANDIDATE_DEPLOYMENT, replicas=0)
    kube.on_patch = candidate_pod
    monkeypatch.setenv("FIRM_CLUSTER__REWARD_CANDIDATE_GRPC", candidate_pod.server.grpc_url)
    get_settings(fresh=True)
    return kube


def _serving(kube: FakeKubeAPI, repository: str) -> None:
    kube.add_deployment("firm", "firm-reward-edit", replicas=1)
    kube.deployments[("firm", "firm-reward-edit")]["spec"]["template"]["metadata"]["annotations"] = {
        ANNOTATION: repository
    }


def _patches(kube: FakeKubeAPI, name: str) -> list[dict]:  # type: ignore[type-arg]
    return [b for m, p, b in kube.requests if m == "PATCH" and p.endswith(f"/deployments/{name}")]


def test_a_better_candidate_is_benched_beside_the_incumbent_and_rolled_out(
    cluster: FakeKubeAPI, critics: dict[str, str], candidate_pod: CandidatePod
) -> None:
    from firm.launch.reward_service import CANDIDATE, INCUMBENT
    from firm.launch.rollout import current, history, resolve_repository

    _serving(cluster, critics["untrained"])
    ep = deploy_reward_service(
        critics["formatted"], target="kubernetes", name="r", model="edit", audit=critics["audit"], margin=0.5,
        who="tester", poll=0.01, timeout=300,
    )  # fmt: skip
    assert ep.decision.startswith("candidate promoted"), ep.decision
    assert ep.repository == critics["formatted"] and ep.grpc == "firm-reward-edit.firm.svc:8001"
    up, down = _patches(cluster, CANDIDATE_DEPLOYMENT)
    assert up["spec"]["replicas"] == 1 and down == {"spec": {"replicas": 0}}
    ann = up["spec"]["template"]["metadata"]["annotations"]
    assert (ann[INCUMBENT], ann[CANDIDATE]) == (critics["untrained"], critics["formatted"])
    (rolled,) = _patches(cluster, "firm-reward-edit")
    assert rolled["spec"]["template"]["metadata"]["annotations"][ANNOTATION] == critics["formatted"]
    assert cluster.deployments[("firm", CANDIDATE_DEPLOYMENT)]["spec"]["replicas"] == 0
    (event,) = history("firm-reward-edit")
    assert (event.action, event.who, event.candidate) == ("promote", "tester", critics["formatted"])
    # the repository it replaced: a rollback can return to a critic served before any record
    assert event.incumbent == critics["untrained"]
    assert event.incumbent_scores.parse_failure_rate == 1.0 > event.candidate_scores.parse_failure_rate
    assert current("firm-reward-edit")["repository"] == critics["formatted"]
    assert resolve_repository("firm-reward-edit", critics["untrained"]) == critics["formatted"]
    n = candidate_pod.started
    assert candidate_pod.engine_loads() == {"firm_engine": n, "firm_engine_candidate": n}  # each loads once


def test_a_worse_candidate_is_refused_and_the_incumbent_keeps_serving(
    cluster: FakeKubeAPI, critics: dict[str, str], candidate_pod: CandidatePod
) -> None:
    from firm.launch.rollout import RolloutRefused, history

    _serving(cluster, critics["formatted"])
    with pytest.raises(RolloutRefused, match=r"candidate refused: parse-failure rate is higher") as refused:
        deploy_reward_service(
            critics["untrained"], target="kubernetes", name="r", model="edit", audit=critics["audit"],
            margin=0.5, poll=0.01, timeout=300,
        )  # fmt: skip
    assert "\n" not in str(refused.value) and str(refused.value).count("MAE") == 2  # one line, both scores
    assert _patches(cluster, "firm-reward-edit") == [], "the reward Deployment is not touched"
    assert [p["spec"]["replicas"] for p in _patches(cluster, CANDIDATE_DEPLOYMENT)] == [1, 0]
    (event,) = history("firm-reward-edit")
    assert event.action == "refuse" and event.candidate == critics["untrained"]
    assert event.incumbent == critics["formatted"]
    assert event.incumbent_scores == refused.value.decision.incumbent
    n = candidate_pod.started
    assert candidate_pod.engine_loads() == {"firm_engine": n, "firm_engine_candidate": n}  # each loads once


def test_a_cluster_rollout_needs_an_audit_and_always_scales_the_candidate_back(
    kube: FakeKubeAPI, tmp_path: Path
) -> None:
    from firm.bench.synthetic import make_synthetic_bench
    from firm.launch.rollout import history

    _serving(kube, "s3://firm-models/runs/old/triton-edit")
    kube.add_deployment("firm", CANDIDATE_DEPLOYMENT, replicas=0)
    with pytest.raises(
        JobError, match=r"already serves a critic \(s3://firm-models/runs/old/.*needs an audit"
    ):
        deploy_reward_service(REPO_URI, target="kubernetes", name="r", model="edit", poll=0.01, timeout=5)
    assert [m for m, _, _ in kube.requests] == ["GET"], "nothing is patched"
    make_synthetic_bench(tmp_path / "audit", 2, seed=3, size=48, n_gen=0, requested=4)
    kube.stuck_rollouts.add(CANDIDATE_DEPLOYMENT)  # the candidate pod never gets ready
    with pytest.raises(JobError, match=r"did not finish starting candidate .* within 0\.3 s"):
        deploy_reward_service(
            REPO_URI, target="kubernetes", name="r", model="edit", audit=str(tmp_path / "audit"), poll=0.01,
            timeout=0.3,
        )  # fmt: skip
    assert [p["spec"]["replicas"] for p in _patches(kube, CANDIDATE_DEPLOYMENT)] == [1, 0]
    assert _patches(kube, "firm-reward-edit") == [] and history("firm-reward-edit") == []


def test_a_first_critic_on_the_cluster_is_recorded_as_the_initial_version(kube: FakeKubeAPI) -> None:
    from firm.launch.rollout import history

    kube.add_deployment("firm", "firm-reward-edit", replicas=0)  # as the chart installs it before any critic
    ep = deploy_reward_service(REPO_URI, target="kubernetes", name="r", model="edit", poll=0.01, timeout=10)
    assert ep.decision == "no incumbent: the critic serves as version 1" and ep.version == 1
    (event,) = history("firm-reward-edit")
    assert (event.action, event.version, event.candidate) == ("initial", 1, REPO_URI)
