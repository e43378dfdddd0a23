"""Render a `ResolvedJob` as a Kubeflow `PyTorchJob` (kubeflow.org/v1), built from the kubeflow-training SDK models.

Layout of the rendered job:

- `Master` (1 replica) + `Worker` (nodes − 1 replicas), or only `Worker` replicas for elastic jobs (the operator
  points the c10d rendezvous at worker-0); `nprocPerNode` = processes per node; the container is named `pytorch`
  and exposes the operator's `pytorchjob-port`.
- each pod: the pool's node selector (+ accelerator label) and tolerations, GPU requests = limits = GPUs per node,
  a memory-backed `/dev/shm` with a size limit, `emptyDir`s for `/tmp` and the working directory (the root
  filesystem is read-only), non-root user, every capability dropped, `seccompProfile: RuntimeDefault`, no
  service-account token, the FIRM settings ConfigMap as `envFrom`, credentials as `secretKeyRef` env, the cluster's
  image pull Secrets, and the Istio sidecar opt-out (`sidecar.istio.io/inject: "false"`).
- `runPolicy`: clean-pod policy, TTL after finishing, backoff limit, active deadline, and, for a gang-scheduled job,
  a `schedulingPolicy` (min available, queue, priority class, timeout) with the pods' `schedulerName` set to the gang
  scheduler: the job spec's `gang:` over the cluster setting `gang_scheduler` (the chart's
  `training.gangScheduling`), see `firm.launch.spec.GangSettings`. The Training Operator creates the PodGroup when
  it runs with `--gang-scheduler-name` (Volcano or scheduler-plugins).
"""

from __future__ import annotations

from typing import Any

import yaml
from kubernetes.client import (
    ApiClient,
    V1Capabilities,
    V1ConfigMapEnvSource,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvFromSource,
    V1EnvVar,
    V1EnvVarSource,
    V1LocalObjectReference,
    V1ObjectMeta,
    V1PodSecurityContext,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecretKeySelector,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from firm.launch.spec import POD_WORKDIR, ResolvedJob

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the Training Operator finds the training container by this name
PORT_NAME, PORT = "pytorchjob-port", 23456
RUN_AS = 1000
LABEL_JOB = "firm.dev/job"
# Multi-user Kubeflow profile namespaces carry `istio-injection=enabled`; a pod with an injected sidecar never
# completes (the sidecar keeps running), so every FIRM job pod opts out. Istio reads the label (the annotation of the
# same name is its older, still honoured form): istio/istio pkg/kube/inject/webhook.go (injectRequired).
ISTIO_INJECT = "sidecar.istio.io/inject"


def labels(job: ResolvedJob) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "firm",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": "firmctl",
        LABEL_JOB: job.name,
        "firm.dev/entrypoint": job.spec.entrypoint if job.spec.entrypoint in ("sft", "rl") else "module",
        **job.spec.labels,
    }


def annotations(job: ResolvedJob) -> dict[str, str]:
    return {
        "firm.dev/recipe": job.spec.recipe,
        "firm.dev/checkpoint-uri": job.checkpoint_uri,
        "firm.dev/world-size": str(job.world_size),
        "firm.dev/pool": job.spec.pool,
        **({"firm.dev/description": job.spec.description} if job.spec.description else {}),
        **job.spec.annotations,
    }


def _resources(job: ResolvedJob) -> V1ResourceRequirements:
    r = job.resources
    requests = {k: v for k, v in (("cpu", r.requests.cpu), ("memory", r.requests.memory)) if v is not None}
    limits = {k: v for k, v in (("cpu", r.limits.cpu), ("memory", r.limits.memory)) if v is not None}
    if job.gpus_per_node > 0:
        requests[job.pool.gpu_resource] = str(job.gpus_per_node)
        limits[job.pool.gpu_resource] = str(job.gpus_per_node)
    return V1ResourceRequirements(requests=requests or None, limits=limits or None)


def _env(job: ResolvedJob) -> list[V1EnvVar]:
    env = [V1EnvVar(name=k, value=v) for k, v in job.env.items()]
    env += [
        V1EnvVar(
            name=name,
            value_from=V1EnvVarSource(
                secret_key_ref=V1SecretKeySelector(
                    name=ref.secret, key=ref.key, optional=ref.optional or None
                )
            ),
        )
        for name, ref in job.secret_env
    ]
    return env


def pod_template(job: ResolvedJob) -> V1PodTemplateSpec:
    spec = job.spec
    container = V1Container(
        name=CONTAINER,
        image=job.image,
        image_pull_policy=spec.image_pull_policy,
        command=job.command("python"),
        working_dir=POD_WORKDIR,
        env=_env(job),
        env_from=[
            V1EnvFromSource(config_map_ref=V1ConfigMapEnvSource(name=job.settings_configmap, optional=True))
        ]
        if job.settings_configmap
        else None,
        ports=[V1ContainerPort(name=PORT_NAME, container_port=PORT, protocol="TCP")],
        resources=_resources(job),
        volume_mounts=[
            V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            V1VolumeMount(name="tmp", mount_path="/tmp"),
            V1VolumeMount(name="workspace", mount_path=POD_WORKDIR),
        ],
        security_context=V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            run_as_user=RUN_AS,
            capabilities=V1Capabilities(drop=["ALL"]),
        ),
    )
    tolerations = [V1Toleration(**_snake(t.to_k8s())) for t in job.pool.tolerations]
    pod = V1PodSpec(
        containers=[container],
        node_selector=job.pool.selector() or None,
        tolerations=tolerations or None,
        service_account_name=job.service_account,
        automount_service_account_token=False,
        priority_class_name=spec.priority_class,
        image_pull_secrets=[V1LocalObjectReference(name=n) for n in job.image_pull_secrets] or None,
        scheduler_name=job.gang.scheduler_name if job.gang else None,
        security_context=V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=RUN_AS,
            run_as_group=RUN_AS,
            fs_group=RUN_AS,
            seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
        ),
        volumes=[
            V1Volume(name="dshm", empty_dir=V1EmptyDirVolumeSource(medium="Memory", size_limit=job.shm_size)),
            V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource()),
            V1Volume(name="workspace", empty_dir=V1EmptyDirVolumeSource()),
        ],
    )
    return V1PodTemplateSpec(
        metadata=V1ObjectMeta(
            labels={**labels(job), ISTIO_INJECT: "false"},
            annotations={**annotations(job), ISTIO_INJECT: "false"},
        ),
        spec=pod,
    )


def _snake(d: dict[str, Any]) -> dict[str, Any]:
    return {"toleration_seconds" if k == "tolerationSeconds" else k: v for k, v in d.items()}


def build_pytorchjob(job: ResolvedJob, namespace: str | None = None) -> Any:
    """The `KubeflowOrgV1PyTorchJob` model for `job`."""
    from kubeflow.training import (
        KubeflowOrgV1ElasticPolicy,
        KubeflowOrgV1PyTorchJob,
        KubeflowOrgV1PyTorchJobSpec,
        KubeflowOrgV1ReplicaSpec,
        KubeflowOrgV1RunPolicy,
        KubeflowOrgV1SchedulingPolicy,
    )

    spec = job.spec
    template = pod_template(job)

    def replica(n: int) -> Any:
        return KubeflowOrgV1ReplicaSpec(replicas=n, restart_policy=spec.restart_policy, template=template)

    elastic = None
    if spec.elastic is not None:
        replicas = {"Worker": replica(spec.nodes)}
        elastic = KubeflowOrgV1ElasticPolicy(
            min_replicas=spec.elastic.min_nodes,
            max_replicas=spec.elastic.max_nodes,
            max_restarts=spec.elastic.max_restarts,
            rdzv_backend="c10d",
        )
    else:
        replicas = {"Master": replica(1)}
        if spec.nodes > 1:
            replicas["Worker"] = replica(spec.nodes - 1)
    scheduling = None
    if job.gang is not None:
        scheduling = KubeflowOrgV1SchedulingPolicy(
            min_available=job.gang.min_available or spec.nodes,
            queue=job.gang.queue,
            priority_class=job.gang.priority_class,
            schedule_timeout_seconds=job.gang.schedule_timeout_seconds,
        )
    run_policy = KubeflowOrgV1RunPolicy(
        clean_pod_policy=spec.clean_pod_policy,
        ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
        scheduling_policy=scheduling,
    )
    return KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=V1ObjectMeta(
            name=job.name, namespace=namespace, labels=labels(job), annotations=annotations(job)
        ),
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(job.nproc_per_node),  # a string in kubeflow.org/v1
            elastic_policy=elastic,
            pytorch_replica_specs=replicas,
            run_policy=run_policy,
        ),
    )


def to_dict(model: Any) -> dict[str, Any]:
    """A Kubernetes model as the plain JSON-able dict the API server receives (camelCase keys, no nulls)."""
    return ApiClient().sanitize_for_serialization(model)


def render_yaml(job: ResolvedJob, namespace: str | None = None) -> str:
    """The PyTorchJob manifest as YAML (what `firmctl job render` prints; `kubectl apply -f -` takes it)."""
    return yaml.safe_dump(to_dict(build_pytorchjob(job, namespace)), sort_keys=False)
