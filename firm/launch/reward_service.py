"""Deploy a Triton model repository as FIRM's reward service and wait until it serves — locally or on Kubernetes.

- `target="local"`: the bundled tritonserver on this machine, started detached for `name` (`firm.serving.service`),
  stopped by `stop_reward_service` (a pipeline's exit handler), whatever happened in between.
- `target="kubernetes"`: the reward Deployment the Helm chart installed (`cluster.reward_deployment`, e.g.
  `firm-reward-edit`, in `cluster.reward_namespace`: the chart's release namespace, wherever the deploy step runs)
  is rolled out to the new repository (one at 0 replicas, installed before any critic existed, is scaled to 1). Its
  pods fetch and verify the repository named by the
  pod-template annotation `firm.dev/model-repository` in an init container; deploying patches that annotation only,
  and waits until the rollout is complete (all replicas updated and ready).

  Why a rollout and not Triton's model-control API: the repository a Triton server reads is fixed when it starts
  (model-control `load` re-reads models from that same repository), a rollout replaces every replica (an HPA may run
  several; model-control would reach one pod), readiness probes gate traffic to the new critic, and a failed
  rollout leaves the old pods serving. Nothing is stopped afterwards: the service stays for the next run.

  Safe rollout on a cluster: when the reward Deployment already serves a critic (replicas > 0; the repository its
  pods resolve — `firm.launch.rollout.resolve_repository` — differs from the new one), the new one is a candidate.
  The chart's `<reward Deployment>-candidate` (0 replicas until then) is given both repositories as pod-template
  annotations (`firm.dev/incumbent-repository`, `firm.dev/candidate-repository`) and 1 replica; its init container
  builds ONE Triton repository with the incumbent's models and the candidate's under `_candidate` names
  (`firmctl serve stage-rollout`), so both are benched on the same audit set through the same live endpoint (its
  Service, `cluster.reward_candidate_grpc`). The candidate Deployment is scaled back to 0 whatever happens. A
  promoted candidate is recorded (history + `current.json`) and the reward Deployment rolled out to it (old pods
  serve until new ones are ready); a refused one is recorded and `RolloutRefused` raised, the reward Deployment
  untouched. `rollback_reward_service` returns the reward Deployment to the version served before the current one
  (from the recorded history, `firm.launch.rollout.lineage`; no bench) through the same rolling update.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from firm.launch.backend import JobError

Target = Literal["local", "kubernetes"]
ANNOTATION = "firm.dev/model-repository"
DEPLOYED_AT = "firm.dev/deployed-at"
INCUMBENT = "firm.dev/incumbent-repository"  # on the candidate Deployment's pod template
CANDIDATE = "firm.dev/candidate-repository"
CANDIDATE_SUFFIX = "-candidate"  # <reward Deployment>-candidate: Deployment and Service of the chart


def candidate_name(deployment: str) -> str:
    """The chart's name for the candidate Deployment and Service of `deployment`: `<deployment>-candidate` cut to
    63 characters and one trailing "-" dropped, as `reward/candidate.yaml` does (`trunc 63 | trimSuffix "-"`)."""
    return (deployment + CANDIDATE_SUFFIX)[:63].removesuffix("-")


class RewardEndpoint(BaseModel):
    target: Target
    name: str
    grpc: str
    repository: str
    decision: str = ""  # the rollout decision, one line (`firm.launch.rollout`)
    version: int | None = None  # the live repository's version serving now (local)


def _apps_api():  # -> kubernetes.client.AppsV1Api
    import os

    from kubernetes import client, config

    try:
        if os.environ.get("KUBECONFIG") or not os.path.isdir("/var/run/secrets/kubernetes.io/"):
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        else:
            config.load_incluster_config()
    except Exception as exc:
        raise JobError(f"no usable Kubernetes configuration to deploy the reward service: {exc}") from None
    return client.AppsV1Api()


def _api_error(exc: Exception, namespace: str, name: str, what: str) -> JobError:
    hint = {
        404: "is the FIRM Helm chart installed with a reward model of that name?",
        403: "the pipeline's service account needs get/patch on this Deployment",
    }
    status = getattr(exc, "status", None)
    return JobError(
        f"cannot {what} Deployment {namespace}/{name} ({status} {getattr(exc, 'reason', exc)}); "
        f"{hint.get(status, '')}"  # type: ignore[arg-type]
    )


def _read(apps, name: str, namespace: str, what: str = "roll out"):  # -> V1Deployment
    from kubernetes.client.exceptions import ApiException

    try:
        return apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        raise _api_error(exc, namespace, name, what) from None


def _patch(apps, name: str, namespace: str, patch: dict, what: str = "roll out"):  # -> V1Deployment
    from kubernetes.client.exceptions import ApiException

    try:
        return apps.patch_namespaced_deployment(name, namespace, patch)
    except ApiException as exc:
        raise _api_error(exc, namespace, name, what) from None


def _wait(apps, name: str, namespace: str, generation: int, timeout: float, poll: float, what: str) -> None:
    """Until every replica of `generation` is updated, ready and available."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dep = _read(apps, name, namespace)
        st, want = dep.status, dep.spec.replicas or 0
        if (
            (st.observed_generation or 0) >= generation
            and (st.updated_replicas or 0) == want
            and (st.ready_replicas or 0) == want
            and (st.available_replicas or 0) == want
            and (st.replicas or 0) == want
        ):
            return
        time.sleep(poll)
    raise JobError(f"Deployment {namespace}/{name} did not finish {what} within {timeout:g} s")


def _rollout(
    name: str, repository: str, namespace: str, timeout: float, poll: float, *, apps=None, current=None
) -> None:
    apps = apps or _apps_api()
    generation = _start_rollout(apps, name, repository, namespace, current)
    _wait(apps, name, namespace, generation, timeout, poll, f"rolling out {repository}")


def _start_rollout(
    apps, name: str, repository: str, namespace: str, current=None, what: str = "roll out"
) -> int:
    """Patch the reward Deployment's pod template to `repository`, stamped `firm.dev/deployed-at` now (its pods serve
    it unless a `current.json` written later names another: `resolve_repository`); returns the generation to wait
    for."""
    patch: dict = {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        ANNOTATION: repository,
                        DEPLOYED_AT: datetime.now(UTC).isoformat(),
                    }
                }
            }
        }
    }
    # The chart installs a reward Deployment at 0 replicas until a critic exists: rolling one out scales it to
    # 1 (an HPA takes over from there), or the rollout would "succeed" with no pod serving anything.
    current = current or _read(apps, name, namespace)
    if not (current.spec.replicas or 0):
        patch["spec"]["replicas"] = 1
    return _patch(apps, name, namespace, patch, what).metadata.generation


def _served(dep, name: str) -> str | None:  # dep: V1Deployment
    """The repository the reward Deployment's pods serve (None at 0 replicas: nothing serves)."""
    from firm.launch.rollout import resolve_repository

    if not (dep.spec.replicas or 0):
        return None
    ann = (dep.spec.template.metadata.annotations if dep.spec.template.metadata else None) or {}
    return resolve_repository(name, ann.get(ANNOTATION) or "", deployed_at=ann.get(DEPLOYED_AT)) or None


def _bench_beside(
    apps,
    deployment: str,
    namespace: str,
    incumbent: str,
    candidate: str,
    audit: str,
    *,
    margin: float,
    who: str | None,
    timeout: float,
    poll: float,
):  # -> firm.launch.rollout.Decision
    """Serve `candidate` beside `incumbent` in the candidate Deployment, bench both there, decide and record a
    refusal (`RolloutRefused`); the candidate Deployment is back at 0 replicas when this returns or raises."""
    from firm.bench.loaders import load_bench
    from firm.config import get_settings
    from firm.errors import InputError
    from firm.launch import rollout as ro

    if margin < 0:
        raise InputError(f"margin must be ≥ 0, got {margin}")
    bench = load_bench(audit)  # a bad audit set fails before anything is scaled
    cluster = get_settings().cluster
    name = candidate_name(deployment)
    grpc = cluster.reward_candidate_grpc.format(
        candidate=name, deployment=deployment, namespace=namespace, port=cluster.reward_grpc_port
    )
    patch = {"spec": {"replicas": 1, "template": {"metadata": {"annotations": {
        INCUMBENT: incumbent, CANDIDATE: candidate, DEPLOYED_AT: datetime.now(UTC).isoformat(),
    }}}}}  # fmt: skip
    what = "serve the candidate critic in"
    try:
        dep = _patch(apps, name, namespace, patch, what)
        _wait(
            apps, name, namespace, dep.metadata.generation, timeout, poll, f"starting candidate {candidate}"
        )
        scores = ro.audit_scores(grpc, bench), ro.audit_scores(grpc, bench, suffix=ro.SUFFIX)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that got us here is the one to report
            _patch(apps, name, namespace, {"spec": {"replicas": 0}}, what)
        raise
    _patch(apps, name, namespace, {"spec": {"replicas": 0}}, what)
    incumbent_scores, candidate_scores = scores
    promote, reason = ro.decide(incumbent_scores, candidate_scores, margin)
    served, new = ro.next_version(deployment)
    if served is None:  # an incumbent rolled out before any record: count it as the version before this one
        served = max(new - 1, 1)
        new = served + 1
    decision = ro.Decision(
        promoted=promote, reason=reason, candidate=candidate_scores, incumbent=incumbent_scores, margin=margin,
        version=new if promote else served, previous=served if promote else None,
    )  # fmt: skip
    if not promote:
        ro.record(ro._entry("refuse", deployment, who, decision, candidate, incumbent))
        raise ro.RolloutRefused(decision)
    ro.record(ro._entry("promote", deployment, who, decision, candidate, incumbent), repository=candidate)
    return decision


def deploy_reward_service(
    repository: str,
    *,
    target: Target,
    name: str,
    model: str = "edit",
    namespace: str | None = None,
    timeout: float = 1800.0,
    poll: float = 5.0,
    audit: str | None = None,
    margin: float = 0.1,
    who: str | None = None,
) -> RewardEndpoint:
    """Make the reward service serve `repository` and return its gRPC endpoint once it is ready.

    `name`: local — the service's name (e.g. the run id); `model`: kubernetes — which reward model of the chart
    (`edit` / `gen`) is rolled out. Locally, a service `name` already running another repository is a rollout:
    the candidate is benched beside it on `audit` and promoted only when not worse (`firm.launch.rollout.rollout`;
    a refusal raises `RolloutRefused`, the incumbent keeps serving); a new service serves it as version 1. On
    Kubernetes, a reward Deployment already serving another critic is a rollout too: the candidate is benched beside
    it in the chart's candidate Deployment and rolled out only when not worse (see the module docstring)."""
    from firm.config import get_settings

    settings = get_settings()
    if target == "local":
        from firm.launch import rollout as ro
        from firm.serving.service import get_service, start_service

        running = get_service(name)
        if running is not None and running.live and running.repository != repository:
            if not audit:
                raise JobError(f"reward service {name!r} already serves a critic: a rollout needs an audit")
            d = ro.rollout(name, repository, audit, margin=margin, who=who, timeout=timeout)
            return RewardEndpoint(
                target="local", name=name, grpc=running.grpc, repository=repository, decision=d.reason,
                version=d.version,
            )  # fmt: skip
        rec = start_service(name, repository, startup_timeout=timeout)
        version = ro.LiveRepository(rec.live).version if rec.live else 1
        decision = f"no incumbent: the critic serves as version {version}"
        if running is None and version == 1:
            ro.record(
                ro.HistoryEntry(
                    action="initial", service=name, who=ro._who(who), when=ro._now(), version=1, previous=None,
                    candidate=repository, reason=decision,
                ),
                repository=repository,
            )  # fmt: skip
        return RewardEndpoint(
            target="local", name=name, grpc=rec.grpc, repository=repository, decision=decision, version=version,
        )  # fmt: skip
    if target == "kubernetes":
        from firm.launch import rollout as ro

        ns = namespace or settings.cluster.reward_namespace or settings.namespace
        deployment = settings.cluster.reward_deployment.format(name=model)
        grpc = f"{deployment}.{ns}.svc:{settings.cluster.reward_grpc_port}"
        apps = _apps_api()
        dep = _read(apps, deployment, ns)
        incumbent = _served(dep, deployment)
        if incumbent is not None and incumbent != repository:
            if not audit:
                raise JobError(
                    f"reward Deployment {ns}/{deployment} already serves a critic ({incumbent}): a rollout needs "
                    "an audit set"
                )
            d = _bench_beside(
                apps, deployment, ns, incumbent, repository, audit, margin=margin, who=who, timeout=timeout,
                poll=poll,
            )  # fmt: skip
            _rollout(deployment, repository, ns, timeout, poll, apps=apps, current=dep)
            return RewardEndpoint(
                target="kubernetes", name=deployment, grpc=grpc, repository=repository, decision=d.reason,
                version=d.version,
            )  # fmt: skip
        _rollout(deployment, repository, ns, timeout, poll, apps=apps, current=dep)
        if incumbent == repository:
            return RewardEndpoint(
                target="kubernetes", name=deployment, grpc=grpc, repository=repository,
                decision=f"already serving {repository}: rolled out again",
            )  # fmt: skip
        served, version = ro.next_version(deployment)
        decision = f"no incumbent: the critic serves as version {version}"
        ro.record(
            ro.HistoryEntry(
                action="initial", service=deployment, who=ro._who(who), when=ro._now(), version=version,
                previous=served, candidate=repository, reason=decision,
            ),
            repository=repository,
        )  # fmt: skip
        return RewardEndpoint(
            target="kubernetes", name=deployment, grpc=grpc, repository=repository, decision=decision,
            version=version,
        )  # fmt: skip
    raise JobError(f"unknown reward service target {target!r}; expected local or kubernetes")


def rollback_reward_service(
    *,
    model: str = "edit",
    namespace: str | None = None,
    who: str | None = None,
    timeout: float = 1800.0,
    poll: float = 5.0,
):  # -> firm.launch.rollout.HistoryEntry
    """Roll the chart's reward Deployment for `model` back to the version it served before the current one, per its
    recorded history (`firm.launch.rollout.lineage` of the Deployment's name). No bench: that critic was benched
    and served before. The pod template is patched to its repository (stamped `firm.dev/deployed-at`, so new pods
    resolve it whatever an older `current.json` says), then the `rollback` entry and `current.json` are recorded,
    then the rolling update is awaited (old pods serve until new ones are ready). Nothing changes when the
    Deployment cannot be read or patched, or when the history has nothing to return to."""
    from firm.config import get_settings
    from firm.launch import rollout as ro

    settings = get_settings()
    ns = namespace or settings.cluster.reward_namespace or settings.namespace
    deployment = settings.cluster.reward_deployment.format(name=model)
    apps = _apps_api()
    dep = _read(apps, deployment, ns, "roll back")
    line = ro.lineage(deployment)
    if line.version is None:
        raise ro.RolloutError(
            f"reward Deployment {ns}/{deployment}: no recorded version (firmctl serve history --service "
            f"{deployment}): nothing to roll back to"
        )
    if not line.previous:
        raise ro.RolloutError(
            f"reward Deployment {ns}/{deployment} serves version {line.version}, the first recorded: nothing to "
            "roll back to"
        )
    current, target = line.version, line.previous[-1]
    repository = line.repositories.get(target)
    if repository is None:
        raise ro.RolloutError(
            f"reward Deployment {ns}/{deployment}: the repository of version {target} was not recorded: deploy it "
            "again with the deploy step"
        )
    served, recorded = _served(dep, deployment), line.repositories.get(current)
    if served is not None and recorded is not None and served != recorded:
        raise ro.RolloutError(
            f"reward Deployment {ns}/{deployment} serves {served}, not the recorded version {current} ({recorded}): "
            "deploy the critic to return to with the deploy step"
        )
    generation = _start_rollout(apps, deployment, repository, ns, dep, "roll back")
    entry = ro.HistoryEntry(
        action="rollback", service=deployment, who=ro._who(who), when=ro._now(), version=target, previous=current,
        candidate=repository, reason=f"rolled back from version {current} to {target} ({repository})",
    )  # fmt: skip
    ro.record(entry, repository=repository)
    _wait(apps, deployment, ns, generation, timeout, poll, f"rolling back to {repository}")
    return entry


def stop_reward_service(*, target: Target, name: str) -> bool:
    """Stop what `deploy_reward_service(target="local", name=name)` started (True if it was running). On
    Kubernetes the chart's service stays up: nothing to stop."""
    if target != "local":
        return False
    from firm.serving.service import stop_service

    with contextlib.suppress(FileNotFoundError):
        return stop_service(name)
    return False
