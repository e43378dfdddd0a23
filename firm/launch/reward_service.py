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


def _rollout(name: str, repository: str, namespace: str, timeout: float, poll: float) -> None:
    from kubernetes.client.exceptions import ApiException

    apps = _apps_api()
    patch: dict = {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        ANNOTATION: repository,
                        "firm.dev/deployed-at": datetime.now(UTC).isoformat(),
                    }
                }
            }
        }
    }
    try:
        # The chart installs a reward Deployment at 0 replicas until a critic exists: rolling one out scales it to
        # 1 (an HPA takes over from there), or the rollout would "succeed" with no pod serving anything.
        current = apps.read_namespaced_deployment(name, namespace)
        if not (current.spec.replicas or 0):
            patch["spec"]["replicas"] = 1
        dep = apps.patch_namespaced_deployment(name, namespace, patch)
    except ApiException as exc:
        hint = {
            404: "is the FIRM Helm chart installed with a reward model of that name?",
            403: "the pipeline's service account needs get/patch on this Deployment",
        }
        raise JobError(
            f"cannot roll out Deployment {namespace}/{name} ({exc.status} {exc.reason}); {hint.get(exc.status, '')}"
        ) from None
    generation = dep.metadata.generation
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dep = apps.read_namespaced_deployment(name, namespace)
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
    raise JobError(
        f"Deployment {namespace}/{name} did not finish rolling out {repository} within {timeout:g} s"
    )


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
    a refusal raises `RolloutRefused`, the incumbent keeps serving); a new service serves it as version 1."""
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
        ns = namespace or settings.cluster.reward_namespace or settings.namespace
        deployment = settings.cluster.reward_deployment.format(name=model)
        _rollout(deployment, repository, ns, timeout, poll)
        grpc = f"{deployment}.{ns}.svc:{settings.cluster.reward_grpc_port}"
        return RewardEndpoint(target="kubernetes", name=deployment, grpc=grpc, repository=repository)
    raise JobError(f"unknown reward service target {target!r}; expected local or kubernetes")


def stop_reward_service(*, target: Target, name: str) -> bool:
    """Stop what `deploy_reward_service(target="local", name=name)` started (True if it was running). On
    Kubernetes the chart's service stays up: nothing to stop."""
    if target != "local":
        return False
    from firm.serving.service import stop_service

    with contextlib.suppress(FileNotFoundError):
        return stop_service(name)
    return False
