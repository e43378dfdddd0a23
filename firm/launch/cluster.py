"""Cluster settings: node pools, images, Secret and ConfigMap names — defined once, read by every launcher.

`FirmSettings.cluster` (`firm.config`) holds a `ClusterSettings`; set it in `$FIRM_HOME/config.yaml` /
`FIRM_CONFIG` under `cluster:`, or per field from the environment with `__` as the nesting delimiter
(`FIRM_CLUSTER__TRAINER_IMAGE=...`, `FIRM_CLUSTER__NODE_POOLS='{"gpu": {...}}'` as JSON). The Helm chart writes the
same values into the `firm-settings` ConfigMap, so what `firmctl job render` produces and what the chart installs
agree by construction.

A **node pool** is a name for a set of nodes and what it takes to land on them: a node selector, tolerations, the
GPU resource name and how many GPUs each node has (0 = a CPU pool), the accelerator label/value that identifies the
GPU model (optional), and the CPU, memory and `/dev/shm` of each job pod on it (`job_resources`). Job specs and
pipeline steps name a pool; the render fills in the rest.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A container image that names a tag or a digest: registry/repo:tag, registry/repo@sha256:<64 hex>, or both.
IMAGE_REF = re.compile(
    r"^(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}  # fmt: skip


def check_quantity(value: object, what: str = "quantity") -> str:
    if not QUANTITY.match(str(value)):
        raise ValueError(f"{what} {value!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    return str(value)


def quantity_bytes(value: str) -> float:
    """A Kubernetes quantity (`64Gi`, `900M`, `2`) as a number (bytes for memory)."""
    m = QUANTITY.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return float(str(value)[: len(str(value)) - len(m.group(2) or "")]) * _UNITS[m.group(2) or ""]


def check_dns_subdomain(value: str, what: str = "name") -> str:
    if not value or len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid Kubernetes name (lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit)"
        )
    return value


def check_image(value: str) -> str:
    """An image reference with a tag or a digest (`:latest` is refused: a rerun must run the same code)."""
    m = IMAGE_REF.match(value)
    if not m or not (m.group("tag") or m.group("digest")):
        raise ValueError(
            f"image {value!r} must name a tag or a digest (e.g. ghcr.io/org/firm-trainer:0.1.0 or ...@sha256:...)"
        )
    if m.group("tag") == "latest" and not m.group("digest"):
        raise ValueError(f"image {value!r}: ':latest' is not reproducible; pin a version tag or a digest")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Toleration(_Model):
    """A Kubernetes toleration (the fields of `core/v1 Toleration`)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)

    def to_k8s(self) -> dict[str, object]:
        out: dict[str, object] = {"operator": self.operator}
        if self.key is not None:
            out["key"] = self.key
        if self.value is not None:
            out["value"] = self.value
        if self.effect is not None:
            out["effect"] = self.effect
        if self.toleration_seconds is not None:
            out["tolerationSeconds"] = self.toleration_seconds
        return out


class JobResources(_Model):
    """CPU, memory (request = limit) and `/dev/shm` of each job pod on a pool: what a job spec that names no
    `resources` / `shm_size` gets (the Helm chart: `nodePools.<pool>.jobResources`). `/dev/shm` is memory-backed and
    counts against the container's memory limit, so `shm_size` may not exceed `memory`."""

    cpu: str | None = Field(default=None, description="CPU request and limit of each job pod, e.g. 96")
    memory: str | None = Field(
        default=None, description="memory request and limit of each job pod, e.g. 900Gi"
    )
    shm_size: str | None = Field(default=None, description="size of the memory-backed /dev/shm (<= memory)")

    @field_validator("cpu", "memory", "shm_size", mode="before")
    @classmethod
    def _q(cls, v: object) -> str | None:
        return None if v is None else check_quantity(v)

    @model_validator(mode="after")
    def _shm_fits(self) -> JobResources:
        if self.shm_size and self.memory and quantity_bytes(self.shm_size) > quantity_bytes(self.memory):
            raise ValueError(
                f"job_resources.shm_size {self.shm_size} exceeds job_resources.memory {self.memory}: /dev/shm "
                "counts against the memory limit"
            )
        return self


class NodePool(_Model):
    """Where a job lands and what one node offers."""

    description: str = ""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    gpu_resource: str = Field(default="nvidia.com/gpu", description="extended resource name of the GPUs")
    gpus_per_node: int = Field(default=0, ge=0, description="GPUs on each node of the pool; 0 = CPU pool")
    accelerator_label: str | None = Field(
        default=None, description="node label naming the GPU model, e.g. nvidia.com/gpu.product"
    )
    accelerator_type: str | None = Field(
        default=None, description="its value on this pool's nodes, e.g. NVIDIA-H100-80GB-HBM3"
    )
    job_resources: JobResources = Field(
        default_factory=JobResources, description="CPU, memory and /dev/shm of each job pod on this pool"
    )

    @model_validator(mode="after")
    def _accelerator_pair(self) -> NodePool:
        if (self.accelerator_label is None) != (self.accelerator_type is None):
            raise ValueError("accelerator_label and accelerator_type go together (both or neither)")
        return self

    @property
    def is_gpu(self) -> bool:
        return self.gpus_per_node > 0

    def selector(self) -> dict[str, str]:
        """The node selector, with the accelerator label pinned when the pool names one."""
        out = dict(self.node_selector)
        if self.accelerator_label and self.accelerator_type:
            out[self.accelerator_label] = self.accelerator_type
        return out


class SecretRef(_Model):
    """A Kubernetes Secret and the keys FIRM reads from it, each exposed to the container as an env variable."""

    name: str
    keys: dict[str, str] = Field(
        default_factory=dict, description="env variable → key in the Secret (values stay in the cluster)"
    )
    optional: bool = Field(default=False, description="the pod starts even when the Secret is absent")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_dns_subdomain(v, "Secret name")

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("a Secret reference needs at least one env variable → key")
        for env in v:
            if not ENV_NAME.match(env):
                raise ValueError(f"{env!r} is not a valid environment variable name")
        return v


def _default_pools() -> dict[str, NodePool]:
    return {
        "cpu": NodePool(
            description="CPU nodes (small jobs, pipeline steps, tests)",
            job_resources=JobResources(cpu="4", memory="8Gi", shm_size="1Gi"),
        ),
        # No node labels a stock cluster may lack (the NVIDIA GPU operator's nvidia.com/gpu.present / .product):
        # a pod lands on GPU nodes through its nvidia.com/gpu request and tolerates their usual taint. Add your
        # nodes' labels (node_selector, accelerator_label/type) in the settings or the chart's nodePools.
        "gpu-h100": NodePool(
            description="8 x H100 80GB nodes (placed by the nvidia.com/gpu request; add your nodes' labels)",
            tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
            gpus_per_node=8,
            job_resources=JobResources(cpu="96", memory="900Gi", shm_size="128Gi"),
        ),
    }


class ClusterSettings(_Model):
    """What FIRM needs to know about the cluster it launches on (all names, no credentials)."""

    trainer_image: str = Field(
        default="ghcr.io/firm-platform/firm-trainer:0.1.0",
        description="image of training jobs (SFT, RL) when a job spec names none",
    )
    pipeline_image: str = Field(
        default="ghcr.io/firm-platform/firm-pipeline:0.1.0", description="base image of the KFP components"
    )
    triton_image: str = Field(
        default="ghcr.io/firm-platform/firm-triton:0.1.0", description="image of the Triton reward service"
    )
    checkpoints_uri: str = Field(
        default="s3://firm-checkpoints", description="root of cluster jobs' checkpoints (one prefix per job)"
    )
    settings_configmap: str = Field(
        default="firm-settings", description="ConfigMap with the FIRM_* settings every pod loads (envFrom)"
    )
    service_account: str | None = Field(
        default="firm-trainer", description="service account of training pods (no API token is mounted)"
    )
    object_store_secret: SecretRef | None = Field(
        default_factory=lambda: SecretRef(
            name="firm-object-store",
            keys={"FIRM_S3_ACCESS_KEY": "access-key", "FIRM_S3_SECRET_KEY": "secret-key"},
        ),
        description="Secret with the S3/MinIO credentials",
    )
    hf_token_secret: SecretRef | None = Field(
        default_factory=lambda: SecretRef(name="firm-hf-token", keys={"HF_TOKEN": "token"}, optional=True),
        description="Secret with a Hugging Face token (gated models); optional",
    )
    node_pools: dict[str, NodePool] = Field(default_factory=_default_pools)
    job_backend: Literal["pytorchjob", "trainjob", "auto", "local"] = Field(
        default="pytorchjob",
        description="backend of `firmctl job` and the pipelines' launcher steps when --backend is not given: "
        "pytorchjob (Kubeflow Training Operator v1), trainjob (Kubeflow Trainer v2), auto (whichever of the two "
        "the cluster has installed, TrainJob first), local",
    )
    trainjob_runtime: str = Field(
        default="torch-distributed",
        description="the ClusterTrainingRuntime TrainJobs run on (Kubeflow Trainer installs torch-distributed)",
    )
    reward_deployment: str = Field(
        default="firm-reward-{name}",
        description="name of the reward service's Deployment (and Service) per model; {name} is edit or gen",
    )
    reward_namespace: str | None = Field(
        default=None,
        description="namespace of the reward Deployments (the chart writes its release namespace); None: the "
        "FIRM namespace — a deploy step running in a pipeline namespace must not look for them in its own",
    )
    reward_grpc_port: int = Field(default=8001, ge=1, le=65535)
    reward_candidate_grpc: str = Field(
        default="{candidate}.{namespace}.svc:{port}",
        description="gRPC address where a deploy step benches a candidate critic beside the incumbent (the "
        "chart's Service <reward Deployment>-candidate, cut to 63 characters as the chart cuts it); {candidate}, "
        "{deployment}, {namespace} and {port} are filled in",
    )
    pipeline_cpu_pool: str = Field(default="cpu", description="pool of CPU pipeline steps (and launchers)")
    pipeline_gpu_pool: str = Field(default="gpu-h100", description="pool of GPU pipeline steps (bench, eval)")
    pipeline_service_account: str = Field(
        default="firm-pipeline-runner", description="service account KFP runs FIRM's pipeline steps as"
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="docker-registry Secrets of every pod FIRM creates (training jobs, pipeline steps)",
    )
    gang_scheduler: str | None = Field(
        default=None,
        description="schedulerName of the cluster's gang scheduler (volcano, scheduler-plugins-scheduler): every "
        "PyTorchJob then gets runPolicy.schedulingPolicy and its pods this schedulerName, unless its job spec's "
        "`gang:` says otherwise; None: only job specs with `gang:` are gang-scheduled. Needs that scheduler "
        "installed (and the Training Operator started with --gang-scheduler-name); TrainJobs take gang "
        "scheduling from their runtime's podGroupPolicy",
    )

    @field_validator("image_pull_secrets")
    @classmethod
    def _pull_secrets(cls, v: list[str]) -> list[str]:
        return [check_dns_subdomain(n, "image pull Secret name") for n in v]

    @field_validator("trainer_image", "pipeline_image", "triton_image")
    @classmethod
    def _image(cls, v: str) -> str:
        return check_image(v)

    @field_validator("settings_configmap")
    @classmethod
    def _configmap(cls, v: str) -> str:
        return check_dns_subdomain(v, "ConfigMap name")

    @field_validator("gang_scheduler", mode="before")
    @classmethod
    def _gang_scheduler(cls, v: object) -> str | None:
        return None if v is None or v == "" else check_dns_subdomain(str(v), "gang scheduler name")

    @field_validator("node_pools")
    @classmethod
    def _pools(cls, v: dict[str, NodePool]) -> dict[str, NodePool]:
        for name in v:
            if not DNS1123_LABEL.match(name):
                raise ValueError(f"node pool name {name!r} must be a DNS-1123 label")
        return v
