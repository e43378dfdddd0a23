"""Per-step Kubernetes placement of FIRM's pipeline steps, compiled into the IR with kfp-kubernetes.

Everything comes from the same settings `firmctl job` uses (`firm.launch.cluster`): the pool of a step gives its
node selector (+ accelerator label), tolerations, accelerator type and limit; the object-store credentials and the
HF token come from the Secrets the cluster settings name, the other `FIRM_*` settings from the settings ConfigMap;
GPU steps get a memory-backed `/dev/shm`. Every pod is labelled as part of FIRM (the object store's NetworkPolicy
admits FIRM's pods) and, where it calls the reward service, as a reward client; it pulls its image with the cluster
settings' `image_pull_secrets` and opts out of Istio sidecar injection (`sidecar.istio.io/inject: "false"`: in a
multi-user Kubeflow profile namespace an injected sidecar keeps a finished step's pod running).
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import kubernetes
from kfp.dsl import PipelineTask

from firm.config import get_settings, settings_env_keys

HOUR = 3600


@dataclass(frozen=True)
class Placement:
    gpu: bool = False
    timeout_s: int = 2 * HOUR
    cache: bool = True
    reward_client: bool = False
    shm: str = "16Gi"


def place(task: PipelineTask, p: Placement) -> PipelineTask:
    """Apply `p` to `task` (see the module docstring) and return it."""
    cluster = get_settings().cluster
    pool_name = cluster.pipeline_gpu_pool if p.gpu else cluster.pipeline_cpu_pool
    pool = cluster.node_pools[pool_name]
    for key, value in pool.selector().items():
        kubernetes.add_node_selector(task, key, value)
    for t in pool.tolerations:
        kubernetes.add_toleration(
            task, key=t.key, operator=t.operator, value=t.value, effect=t.effect,
            toleration_seconds=t.toleration_seconds,
        )  # fmt: skip
    if p.gpu and pool.gpus_per_node:
        task.set_accelerator_type(pool.gpu_resource)
        task.set_accelerator_limit(1)
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=p.shm
        )
    kubernetes.use_config_map_as_env(
        task, cluster.settings_configmap, {k: k for k in settings_env_keys()}, optional=True
    )
    for ref in (cluster.object_store_secret, cluster.hf_token_secret):
        if ref is not None:
            kubernetes.use_secret_as_env(
                task, ref.name, {key: env for env, key in ref.keys.items()}, optional=ref.optional
            )
    kubernetes.add_pod_label(task, "app.kubernetes.io/name", "firm")
    kubernetes.add_pod_label(task, "app.kubernetes.io/component", "pipeline-step")
    kubernetes.add_pod_label(task, "sidecar.istio.io/inject", "false")
    kubernetes.add_pod_annotation(task, "sidecar.istio.io/inject", "false")
    if cluster.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(cluster.image_pull_secrets))
    if p.reward_client:
        kubernetes.add_pod_label(task, "firm.dev/reward-client", "true")
    kubernetes.set_image_pull_policy(task, "IfNotPresent")
    kubernetes.set_timeout(task, p.timeout_s)
    task.set_caching_options(p.cache)
    return task


CPU = Placement()
CURATE = Placement(
    timeout_s=2 * 24 * HOUR
)  # teacher curation of a large manifest runs as long as the teacher needs
LAUNCHER = Placement(timeout_s=7 * 24 * HOUR, cache=False)  # the job itself runs on the GPU pool
GPU = Placement(gpu=True, timeout_s=6 * HOUR, reward_client=True)
DEPLOY = Placement(timeout_s=2 * HOUR, cache=False, reward_client=True)
EXIT = Placement(timeout_s=HOUR, cache=False)
