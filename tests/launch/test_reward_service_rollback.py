"""Rolling the chart's reward Deployment back (`rollback_reward_service`, `firmctl serve rollback --target
kubernetes`): the version served before the current one is found in the recorded history, recorded as a `rollback`
with `current.json` pointing at it, and rolled out — and the reward pods' init container (`firmctl serve
resolve-repository` with the pod's annotations) then resolves the rolled-back repository. At the HTTP boundary: the
real kubernetes client against tests/launch's fake API server; history entries written with `rollout.record`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from firm.cli.main import app
from firm.launch import rollout as ro
from firm.launch.backend import JobError
from firm.launch.reward_service import (
    ANNOTATION,
    DEPLOYED_AT,
    _rollout,
    deploy_reward_service,
    rollback_reward_service,
)
from tests.launch.k8s_api import FakeKubeAPI

DEPLOYMENT = "firm-reward-edit"
A = "s3://firm-models/runs/a/triton-edit"
B = "s3://firm-models/runs/b/triton-edit"
C = "s3://firm-models/runs/c/triton-edit"


def _promote(repository: str, version: int, previous: int, incumbent: str | None = None) -> None:
    """What the deploy step does for a promoted candidate: record it, then roll the reward Deployment out to it."""
    ro.record(
        ro.HistoryEntry(
            action="promote", service=DEPLOYMENT, who="t@h", when=ro._now(), version=version, previous=previous,
            candidate=repository, incumbent=incumbent,
        ),
        repository=repository,
    )  # fmt: skip
    _rollout(DEPLOYMENT, repository, "firm", 10, 0.01)


def _refuse(repository: str, version: int) -> None:
    ro.record(
        ro.HistoryEntry(
            action="refuse", service=DEPLOYMENT, who="t@h", when=ro._now(), version=version, previous=None,
            candidate=repository,
        )
    )  # fmt: skip


def _pod_annotations(kube: FakeKubeAPI) -> dict[str, str]:
    return kube.deployments[("firm", DEPLOYMENT)]["spec"]["template"]["metadata"]["annotations"]


def _patches(kube: FakeKubeAPI) -> list[dict]:  # type: ignore[type-arg]
    return [b for m, p, b in kube.requests if m == "PATCH" and p.endswith(f"/deployments/{DEPLOYMENT}")]


def _cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["serve", *args])


def _resolved_by_a_new_pod(kube: FakeKubeAPI) -> str:
    """What the chart's init container of a pod started now resolves, given the pod template's annotations."""
    ann = _pod_annotations(kube)
    run = _cli(
        "resolve-repository", f"--service={DEPLOYMENT}", f"--default={ann[ANNOTATION]}",
        f"--deployed-at={ann.get(DEPLOYED_AT, '')}",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    return run.stdout.strip()


def test_a_rollback_rolls_the_deployment_to_the_version_before_and_new_pods_resolve_it(
    kube: FakeKubeAPI,
) -> None:
    kube.add_deployment("firm", DEPLOYMENT, replicas=0)  # as the chart installs it before any critic
    deploy_reward_service(A, target="kubernetes", name="r", model="edit", poll=0.01, timeout=10)  # version 1
    _promote(B, 2, 1)
    assert _resolved_by_a_new_pod(kube) == B
    before = dict(_pod_annotations(kube))
    kube.requests.clear()

    run = _cli(
        "rollback", "--target=kubernetes", "--model=edit", "--who=tester", "--poll=0.01", "--timeout=10"
    )
    assert run.exit_code == 0, run.output
    entry = json.loads(run.stdout)
    assert [entry[k] for k in ("action", "version", "previous", "who")] == ["rollback", 1, 2, "tester"]
    assert entry["candidate"] == A and "from version 2 to 1" in entry["reason"]
    (patch,) = _patches(kube)
    assert patch["spec"]["template"]["metadata"]["annotations"][ANNOTATION] == A
    assert "replicas" not in patch["spec"], "a serving Deployment keeps its replica count (or its HPA's)"
    gets = [p for m, p, _ in kube.requests if m == "GET" and p.endswith(f"/deployments/{DEPLOYMENT}")]
    assert len(gets) >= 3, "it reads the Deployment, then waits until the rolled-back generation is ready"
    rbac = pytest.importorskip("tests.deploy.rbac")
    from tests.deploy.rbac_calls import FIRM_CALLS

    table = {(c.verb, c.group, c.resource) for c in FIRM_CALLS}
    made = {
        (c.verb, c.group, c.resource)
        for m, p, _ in kube.requests
        for c in [rbac.call_from_request("x", m, p)]
    }
    assert made <= table, "the calls the deploy step's ServiceAccount may make (tests/deploy/rbac_calls.py)"
    assert [e.action for e in ro.history(DEPLOYMENT)] == ["initial", "promote", "rollback"]
    now = ro.current(DEPLOYMENT)
    assert (now["version"], now["previous"], now["repository"], now["who"]) == (1, 2, A, "tester")
    # the reward pods' init container: the rolled-back repository, whichever of the pointer and the annotation wins
    assert _resolved_by_a_new_pod(kube) == A
    old_pod = ro.resolve_repository(DEPLOYMENT, before[ANNOTATION], deployed_at=before[DEPLOYED_AT])
    assert old_pod == A, "a pod of the old template (restarted while the update rolls): the pointer wins"

    kube.requests.clear()  # version 1 was the first: nothing before it
    run = _cli("rollback", "--target=kubernetes", "--poll=0.01")
    assert run.exit_code == 1 and run.output.count("\n") == 1, run.output
    assert "serves version 1, the first recorded: nothing to roll back to" in run.output
    assert _patches(kube) == [] and len(ro.history(DEPLOYMENT)) == 3

    # a new promotion after the rollback goes back to version 1 again, not to 2
    _promote(C, 3, 1)
    assert rollback_reward_service(model="edit", poll=0.01, timeout=10).version == 1
    assert _resolved_by_a_new_pod(kube) == A


def test_the_chart_values_critic_is_returned_to_through_the_incumbent_the_bench_recorded(
    kube: FakeKubeAPI,
) -> None:
    # serving the chart values' repository, nothing recorded
    kube.add_deployment("firm", DEPLOYMENT, replicas=2)
    _pod_annotations(kube)[ANNOTATION] = A
    _refuse(C, 1)  # refusals change nothing
    _promote(B, 2, 1, incumbent=A)  # the deploy step's bench names the incumbent it replaced
    _refuse(C, 2)
    entry = rollback_reward_service(model="edit", who="tester", poll=0.01, timeout=10)
    assert (entry.version, entry.previous, entry.candidate) == (1, 2, A)
    assert _pod_annotations(kube)[ANNOTATION] == A and _resolved_by_a_new_pod(kube) == A
    assert kube.deployments[("firm", DEPLOYMENT)]["spec"]["replicas"] == 2


def test_what_cannot_be_rolled_back_changes_nothing_and_says_why(kube: FakeKubeAPI) -> None:
    with pytest.raises(JobError, match="is the FIRM Helm chart installed with a reward model of that name"):
        rollback_reward_service(model="gen", poll=0.01, timeout=5)
    kube.add_deployment("firm", DEPLOYMENT, replicas=1)
    _pod_annotations(kube)[ANNOTATION] = B
    with pytest.raises(ro.RolloutError, match=r"no recorded version .*: nothing to roll back to"):
        rollback_reward_service(model="edit", poll=0.01, timeout=5)
    ro.record(
        ro.HistoryEntry(
            action="promote", service=DEPLOYMENT, who="t@h", when=ro._now(), version=2, previous=1, candidate=B,
        ),
        repository=B,
    )  # fmt: skip
    # ^ the incumbent it replaced was served before any record, its repository unknown
    with pytest.raises(ro.RolloutError, match="the repository of version 1 was not recorded"):
        rollback_reward_service(model="edit", poll=0.01, timeout=5)
    assert _patches(kube) == []
    _promote(C, 3, 2)
    kube.requests.clear()
    # since rolled out by hand (kubectl patch, helm upgrade): not recorded
    _pod_annotations(kube)[ANNOTATION] = A
    _pod_annotations(kube)[DEPLOYED_AT] = ro._now()
    with pytest.raises(ro.RolloutError, match=rf"serves {A}, not the recorded version 3 \({C}\)"):
        rollback_reward_service(model="edit", poll=0.01, timeout=5)
    kube.forbidden.add("firm")
    with pytest.raises(JobError, match=r"cannot roll back Deployment .*needs get/patch on this Deployment"):
        rollback_reward_service(model="edit", poll=0.01, timeout=5)
    assert _patches(kube) == []
    assert [e.action for e in ro.history(DEPLOYMENT)] == ["promote", "promote"], "no rollback recorded"


def test_the_rollback_cli_chooses_its_target_like_deploy(kube: FakeKubeAPI) -> None:
    for args, message in [
        (["--target=kubernetes", "--service=x"], "--service: with --target kubernetes"),
        (["--target=cluster"], "--target must be local or kubernetes, got 'cluster'"),
        ([], "--service is required with --target local"),
    ]:
        run = _cli("rollback", *args)
        assert run.exit_code == 1 and run.output.startswith(f"error: {message}"), run.output
        assert run.output.count("\n") == 1, run.output
    assert kube.requests == []
