"""Render a `ResolvedJob` as a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1), built from the
`kubeflow-trainer-api` models.

The same `ResolvedJob` renders to a PyTorchJob (`firm.launch.render`) with the same image, command, GPUs, node pool,
`/dev/shm`, deadline, pull Secrets and pod security; this module takes the PyTorchJob pod template and moves each
field to where Trainer v2 (v2.3) accepts it:

- `spec.runtimeRef`: a `ClusterTrainingRuntime` (default `torch-distributed`, the runtime Trainer installs). The
  runtime's torch plugin gives the trainer container torchrun's rendezvous as `PET_NNODES`, `PET_NPROC_PER_NODE`,
  `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT` (kubeflow/trainer v2.3.0,
  pkg/runtime/framework/plugins/torch/torch.go, "Inject PET_* envs into trainer main container (always)"); FIRM's
  command (`firm.launch.torchrun_quiet`, torchrun's own `run`) reads them and sets no rendezvous itself.
- `spec.trainer`: image, command, env, `numNodes`, `numProcPerNode`, `resourcesPerNode` (CPU, memory, GPUs).
- `spec.runtimePatches`: one patch (manager `firm.dev/firmctl`) of the runtime's `node` replicated job: pod labels
  and annotations (FIRM's, and the Istio sidecar opt-out), node selector, tolerations, volumes (`/dev/shm` memory
  `emptyDir` with its size limit, `/tmp`, the working directory), ServiceAccount, image pull Secrets, pod security
  context, and the `node` container's volume mounts and security context (v2.3's `PodSpecPatch` / `ContainerPatch`).
- `spec.activeDeadlineSeconds`.

What Trainer v2.3 takes from the runtime and a TrainJob cannot set (deliberate, named here and in the README): the
restart budget (the runtime's JobSet `failurePolicy` instead of `runPolicy.backoffLimit`), pod clean-up and TTL,
`automountServiceAccountToken`, the priority class and scheduler name, and gang scheduling: a TrainJob is
gang-scheduled when its runtime has a `podGroupPolicy` (`coscheduling` or `volcano`; Trainer then creates the
PodGroup), so neither the cluster setting `gang_scheduler` (the chart's `training.gangScheduling`) nor a job spec's
`gang:` — `ResolvedJob.gang`, which the PyTorchJob render turns into `runPolicy.schedulingPolicy` and the pods'
`schedulerName` — is rendered here: give the `ClusterTrainingRuntime` a `podGroupPolicy` instead. Also from the
runtime: the container's working directory (the trainer image's `WORKDIR` is already the pod working
directory, `/workspace`, where an `emptyDir` is mounted) and `envFrom`: the FIRM settings ConfigMap reaches the pods
as one optional `configMapKeyRef` per setting a training process reads (`SETTINGS_ENV`).
"""

from __future__ import annotations

from typing import Any

import yaml

from firm.launch.render import ISTIO_INJECT, annotations, labels, pod_template, to_dict
from firm.launch.spec import ResolvedJob

GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND, PLURAL = "TrainJob", "trainjobs"
DEFAULT_RUNTIME = "torch-distributed"
RUNTIME_KIND = "ClusterTrainingRuntime"
# The replicated job and container that Trainer's torch runtimes name `node` (torch-distributed.yaml in Trainer's
# chart, charts/kubeflow-trainer/files/runtimes/); the torch plugin injects PET_* into this container.
NODE = "node"
PATCH_MANAGER = "firm.dev/firmctl"
# Settings (keys of the chart's settings ConfigMap) that a training process reads; the others configure the
# launcher, not the job.
SETTINGS_ENV = (
    "FIRM_STORE_URI", "FIRM_S3_ENDPOINT", "FIRM_S3_SECURE", "FIRM_S3_REGION", "FIRM_DATASETS_BUCKET",
    "FIRM_CHECKPOINTS_BUCKET", "FIRM_MODELS_BUCKET", "FIRM_NAMESPACE", "FIRM_TRITON_URL",
)  # fmt: skip


def _settings_env(configmap: str) -> list[dict[str, Any]]:
    return [
        {"name": key, "valueFrom": {"configMapKeyRef": {"name": configmap, "key": key, "optional": True}}}
        for key in SETTINGS_ENV
    ]


def trainjob_dict(
    job: ResolvedJob, namespace: str | None = None, runtime: str = DEFAULT_RUNTIME
) -> dict[str, Any]:
    """The TrainJob for `job` as the plain dict the API server receives (camelCase keys, no nulls)."""
    pod = to_dict(pod_template(job))
    container = pod["spec"]["containers"][0]
    env = list(container.get("env") or [])
    if job.settings_configmap:
        explicit = {e["name"] for e in env}
        env += [e for e in _settings_env(job.settings_configmap) if e["name"] not in explicit]
    pod_spec = {
        key: pod["spec"][key]
        for key in ("nodeSelector", "tolerations", "volumes", "serviceAccountName", "imagePullSecrets",
                    "securityContext")
        if pod["spec"].get(key)
    }  # fmt: skip
    pod_spec["containers"] = [
        {
            "name": NODE,
            "volumeMounts": container["volumeMounts"],
            "securityContext": container["securityContext"],
        }
    ]
    trainer: dict[str, Any] = {
        "image": job.image,
        "command": container["command"],
        "numNodes": job.spec.nodes,
        "numProcPerNode": job.nproc_per_node,
    }
    if env:
        trainer["env"] = env
    if container.get("resources"):
        trainer["resourcesPerNode"] = container["resources"]
    spec: dict[str, Any] = {
        "runtimeRef": {"name": runtime, "kind": RUNTIME_KIND, "apiGroup": GROUP},
        "trainer": trainer,
        "runtimePatches": [{
            "manager": PATCH_MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                "name": NODE,
                "template": {"spec": {"template": {
                    "metadata": {"labels": {**labels(job), ISTIO_INJECT: "false"},
                                 "annotations": {**annotations(job), ISTIO_INJECT: "false"}},
                    "spec": pod_spec,
                }}},
            }]}}},
        }],
    }  # fmt: skip
    if job.spec.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = job.spec.active_deadline_seconds
    metadata: dict[str, Any] = {"name": job.name, "labels": labels(job), "annotations": annotations(job)}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def build_trainjob(job: ResolvedJob, namespace: str | None = None, runtime: str = DEFAULT_RUNTIME) -> Any:
    """The typed `TrainerV1alpha1TrainJob` model for `job` (kubeflow-trainer-api)."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    return TrainerV1alpha1TrainJob.from_dict(trainjob_dict(job, namespace, runtime))


def render_trainjob_yaml(
    job: ResolvedJob, namespace: str | None = None, runtime: str = DEFAULT_RUNTIME
) -> str:
    """The TrainJob manifest as YAML (`firmctl job render --backend trainjob`; `kubectl apply -f -` takes it)."""
    return yaml.safe_dump(build_trainjob(job, namespace, runtime).to_dict(), sort_keys=False)
