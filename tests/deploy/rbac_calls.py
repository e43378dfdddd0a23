"""Who calls the Kubernetes API with a FIRM pipeline run's ServiceAccount, and how: the table `tests/deploy/rbac.py`
checks the chart's Roles against (every call allowed, nothing granted that no call needs).

Upstream sources, pinned (read them to re-check; the chart's Role cites the same files):
- kubeflow/pipelines @ 7b70c7b95f6832772efd6fd0029a4024491a0f44 (KFP v2 driver and launcher, both run in the run's
  pods as its ServiceAccount);
- argoproj/argo-workflows @ f016ad89eb269d282aec06dc491c29f396a38df4 (the emissary executor in every step pod).

Placeholders: RUN is the namespace the pipeline runs in, RELEASE the chart's namespace; the reward Deployments (and
their `-candidate` Deployments, the safe rollout's bench) are expanded per model. FIRM's own calls are what
firm/launch does (TrainingClient, CoreV1Api, AppsV1Api); calls
recorded from tests/launch's fake API server can be appended to FIRM_CALLS (see rbac.call_from_request).
"""

from __future__ import annotations

from tests.deploy.rbac import Call

RUN, RELEASE = "{run}", "{release}"
KFP_LAUNCHER = "{kfp-launcher}"
ARTIFACT_SECRET = "{artifact-secret}"
REWARD = "{reward}"

KFP = "kubeflow/pipelines@7b70c7b9:"
ARGO = "argoproj/argo-workflows@f016ad89:"

KFP_CALLS = [
    Call(
        "kfp-driver",
        "get",
        "",
        "configmaps",
        RUN,
        KFP_LAUNCHER,
        KFP
        + "backend/src/v2/config/env.go FromConfigMap (ConfigMaps.Get 'kfp-launcher'), from driver/root_dag.go",
    ),
    Call(
        "kfp-driver",
        "get",
        "",
        "secrets",
        RUN,
        ARTIFACT_SECRET,
        KFP + "backend/src/v2/objectstore/object_store.go getS3BucketCredential (Secrets.Get)",
    ),
    Call(
        "kfp-launcher",
        "get",
        "",
        "secrets",
        RUN,
        ARTIFACT_SECRET,
        KFP + "backend/src/v2/objectstore/object_store.go getS3BucketCredential (launcher uploads artifacts)",
    ),
    Call(
        "kfp-driver",
        "get",
        "",
        "pods",
        RUN,
        None,
        KFP + "backend/src/v2/driver/k8s.go (Pods.Get of its own pod when publishing the execution)",
    ),
    Call(
        "kfp-launcher",
        "get",
        "",
        "pods",
        RUN,
        None,
        KFP + "backend/src/v2/component/launcher_v2.go retryIndexFromPodAnnotation (Pods.Get)",
    ),
    Call(
        "kfp-driver",
        "get",
        "argoproj.io",
        "workflows",
        RUN,
        None,
        KFP + "backend/src/v2/cmd/driver/main.go getCurrentWorkflowMetadata (Workflows.Get)",
    ),
]
# Not listed, on purpose: PersistentVolumeClaims create/get/delete (driver/k8s.go) happen only for kfp-kubernetes'
# CreatePVC/DeletePVC, which FIRM's pipelines do not use; Workflows list/watch/update/patch in upstream's
# pipeline-runner Role are not called by the v2 driver or launcher.

ARGO_CALLS = [
    Call(
        "argo-executor",
        "create",
        "argoproj.io",
        "workflowtaskresults",
        RUN,
        None,
        ARGO
        + "workflow/executor/taskresult.go (taskResultClient.Create); docs/workflow-rbac.md minimum for >= v3.4",
    ),
    Call(
        "argo-executor",
        "patch",
        "argoproj.io",
        "workflowtaskresults",
        RUN,
        None,
        ARGO + "workflow/executor/taskresult.go (taskResultClient.Patch)",
    ),
]
# Not listed: pods patch. Argo < 3.6 fell back to patching pod annotations when workflowtaskresults were denied;
# 31493d3c3f ("remove legacy patch pods fallback") dropped it, and with the two calls above granted it never runs.

FIRM_CALLS = [
    Call(
        "firm-step",
        "create",
        "kubeflow.org",
        "pytorchjobs",
        RUN,
        None,
        "firm/launch/pytorchjob.py submit (TrainingClient.create_job)",
    ),
    Call(
        "firm-step",
        "get",
        "kubeflow.org",
        "pytorchjobs",
        RUN,
        None,
        "firm/launch/pytorchjob.py status/wait (TrainingClient.get_job)",
    ),
    Call(
        "firm-step",
        "list",
        "kubeflow.org",
        "pytorchjobs",
        RUN,
        None,
        "firm/launch/pytorchjob.py list (TrainingClient.list_jobs)",
    ),
    Call(
        "firm-step",
        "delete",
        "kubeflow.org",
        "pytorchjobs",
        RUN,
        None,
        "firm/launch/pytorchjob.py cancel (TrainingClient.delete_job)",
    ),
    Call(
        "firm-step",
        "list",
        "",
        "pods",
        RUN,
        None,
        "firm/launch/pytorchjob.py logs (TrainingClient.get_job_pods: list_namespaced_pod)",
    ),
    Call(
        "firm-step",
        "get",
        "",
        "pods/log",
        RUN,
        None,
        "firm/launch/pytorchjob.py logs (CoreV1Api.read_namespaced_pod_log, follow included)",
    ),
    Call(
        "firm-step",
        "patch",
        "apps",
        "deployments",
        RELEASE,
        REWARD,
        "firm/launch/reward_service.py _rollout, _bench_beside, rollback_reward_service: roll out / scale the "
        "candidate / roll back (AppsV1Api.patch_namespaced_deployment)",
    ),
    Call(
        "firm-step",
        "get",
        "apps",
        "deployments",
        RELEASE,
        REWARD,
        "firm/launch/reward_service.py _rollout, _bench_beside, rollback_reward_service: wait until ready "
        "(AppsV1Api.read_namespaced_deployment)",
    ),
    # recorded from tests/launch's fake API server (tests/launch/test_cluster_readiness.py): a launcher step that
    # receives SIGTERM reads its own pod and its Argo Workflow to tell a run termination from an eviction
    Call(
        "firm-step",
        "get",
        "",
        "pods",
        RUN,
        None,
        "firm/launch/kfp_run.py run_terminated (CoreV1Api.read_namespaced_pod of its own pod)",
    ),
    Call(
        "firm-step",
        "get",
        "argoproj.io",
        "workflows",
        RUN,
        None,
        "firm/launch/kfp_run.py run_terminated (CustomObjectsApi.get_namespaced_custom_object)",
    ),
]


# FIRM's launch steps with Kubeflow Trainer v2 (training.backend trainjob, or auto): the same verbs on TrainJobs
# (firm/launch/trainjob.py through CustomObjectsApi); pods and pods/log as above. `auto` reads the discovery
# endpoints (/apis/<group>/<version>), which are not namespaced resources and are open to every account.
TRAINJOB_CALLS = [
    Call(
        "firm-step", verb, "trainer.kubeflow.org", "trainjobs", RUN, None, f"firm/launch/trainjob.py ({api})"
    )
    for verb, api in (
        ("create", "submit: create_namespaced_custom_object"),
        ("get", "status/wait: get_namespaced_custom_object"),
        ("list", "list: list_namespaced_custom_object"),
        ("delete", "cancel: delete_namespaced_custom_object"),
    )
]


def backend_calls(backend: str) -> list[Call]:
    """FIRM's calls for the chart's `training.backend`: PyTorchJobs, TrainJobs, or both (auto)."""
    trainjob = TRAINJOB_CALLS if backend in ("trainjob", "auto") else []
    if backend in ("pytorchjob", "auto"):
        return [*FIRM_CALLS, *trainjob]
    return [c for c in FIRM_CALLS if c.resource != "pytorchjobs"] + trainjob


def expand(
    calls: list[Call],
    run: str,
    release: str,
    rewards: list[str],
    kfp_launcher: str = "kfp-launcher",
    artifact_secrets: tuple[str, ...] = ("mlpipeline-minio-artifact",),
) -> list[Call]:
    """The table with its placeholders filled in for one pipeline namespace."""
    names = {KFP_LAUNCHER: [kfp_launcher], ARTIFACT_SECRET: list(artifact_secrets), REWARD: rewards}
    out = []
    for c in calls:
        ns = {RUN: run, RELEASE: release}.get(c.namespace, c.namespace)
        for name in names.get(c.name, [c.name]) if c.name else [None]:
            out.append(Call(c.actor, c.verb, c.group, c.resource, ns, name, c.source))
    return out


def pipeline_run_calls(
    run: str, release: str, rewards: list[str], backend: str = "pytorchjob", **names: object
) -> list[Call]:
    """Everything a FIRM pipeline run in namespace `run` does with its ServiceAccount (`backend`: the chart's
    training.backend)."""
    calls = [*KFP_CALLS, *ARGO_CALLS, *backend_calls(backend)]
    return expand(calls, run, release, rewards, **names)  # type: ignore[arg-type]
