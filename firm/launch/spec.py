"""Job specs: one YAML file that says what to train, where, and on how much hardware — for every backend.

```yaml
name: critic-sft-8b-1x8              # DNS-1123 label: the PyTorchJob's name and the run's checkpoint prefix
entrypoint: sft                      # sft | rl | a Python module that takes --config/--resume like they do
recipe: critic/qwen3vl_8b_edit_full  # shipped recipe, YAML path, or file:// / s3:// URI
overrides: [data.dataset=s3://firm-datasets/firm-edit-sft]
image: ghcr.io/firm-platform/firm-trainer:0.1.0   # tag or digest required (default: cluster.trainer_image)
pool: gpu-h100                       # a node pool from settings (firm.launch.cluster)
nodes: 1
```

`load_job_spec(path, overrides)` reads and validates one (plus `key=value` overrides; `recipe.<key>=<value>`
overrides go to the recipe). `resolve_job(spec, backend=...)` checks it against the node pool and the recipe
(world size vs global batch, override keys) and returns a `ResolvedJob`: the exact command, environment and
checkpoint prefix that both the local backend and the PyTorchJob render use. Every job runs with `--resume auto`
and its own checkpoint prefix, so a restarted pod or a resubmitted job continues from its last published
checkpoint.

The command is the same everywhere: `python -m firm.launch.torchrun_quiet -m <module> --config ... --resume auto
...`. torchrun takes its topology from the `PET_*` variables the Kubeflow Training Operator sets in each pod
(`PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`; elastic jobs get
`PET_RDZV_*` instead of a fixed master), and the local backend sets the same variables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from firm.errors import ConfigError
from firm.launch.cluster import (
    DNS1123_LABEL,
    ENV_NAME,
    ClusterSettings,
    NodePool,
    SecretRef,
    check_dns_subdomain,
    check_image,
    quantity_bytes,
)
from firm.overrides import apply_overrides, read_yaml_mapping, split_override

ENTRYPOINTS: dict[str, str] = {"sft": "firm.critic.sft", "rl": "firm.rl.train"}
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
MAX_NAME = 45  # "<name>-worker-<index>" pod names and their Service names must stay within 63 characters
POD_WORKDIR = "/workspace"
DEFAULT_DEADLINE_S = 7 * 24 * 3600  # = the launcher step's own timeout (pipelines.placement.LAUNCHER)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _quantity(v: str | None, what: str) -> str | None:
    if v is not None and not _QUANTITY.match(str(v)):
        raise ValueError(f"{what} {v!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    return None if v is None else str(v)


class ResourceAmounts(_Model):
    cpu: str | None = None
    memory: str | None = None

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _q(cls, v: Any) -> str | None:
        return _quantity(None if v is None else str(v), "quantity")


class Resources(_Model):
    """CPU and memory of each node's container (GPUs come from the pool and `gpus_per_node`). A job spec without
    `resources` gets its pool's `job_resources` (request = limit)."""

    requests: ResourceAmounts = Field(default_factory=ResourceAmounts)
    limits: ResourceAmounts = Field(default_factory=ResourceAmounts)


class NcclSettings(_Model):
    """NCCL environment of GPU jobs (ignored on CPU pools)."""

    debug: Literal["VERSION", "WARN", "INFO", "TRACE"] | None = "WARN"
    socket_ifname: str | None = Field(default=None, description="NCCL_SOCKET_IFNAME, e.g. eth0 or ^lo,docker")
    ib_disable: bool | None = Field(default=None, description="NCCL_IB_DISABLE (true on clusters without IB)")
    async_error_handling: bool = Field(
        default=True, description="TORCH_NCCL_ASYNC_ERROR_HANDLING: a hung collective fails the pod"
    )
    extra: dict[str, str] = Field(default_factory=dict, description="more NCCL_* variables")

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not k.startswith("NCCL_") or not ENV_NAME.match(k):
                raise ValueError(f"{k!r} is not an NCCL_* variable")
        return v

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.debug:
            out["NCCL_DEBUG"] = self.debug
        if self.socket_ifname:
            out["NCCL_SOCKET_IFNAME"] = self.socket_ifname
        if self.ib_disable is not None:
            out["NCCL_IB_DISABLE"] = "1" if self.ib_disable else "0"
        out["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1" if self.async_error_handling else "0"
        out.update(self.extra)
        return out


class SecretKeyEnv(_Model):
    """One environment variable read from one key of a Secret."""

    secret: str
    key: str = Field(min_length=1)
    optional: bool = False

    @field_validator("secret")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_dns_subdomain(v, "Secret name")


class JobSecrets(_Model):
    """Secrets the job's containers read credentials from (values never leave the cluster).

    `object_store` / `hf_token`: a Secret name (its keys as in the cluster settings) or a full `{name, keys}`;
    unset = the cluster settings' Secret; `none` = no such Secret. `env`: more variables from Secrets.
    """

    object_store: SecretRef | str | None = "default"
    hf_token: SecretRef | str | None = "default"
    env: dict[str, SecretKeyEnv] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, SecretKeyEnv]) -> dict[str, SecretKeyEnv]:
        for k in v:
            if not ENV_NAME.match(k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
        return v

    @staticmethod
    def _resolve(value: SecretRef | str | None, default: SecretRef | None, what: str) -> SecretRef | None:
        if value is None or value == "none":
            return None
        if isinstance(value, SecretRef):
            return value
        if value == "default":
            return default
        if default is None:
            raise ConfigError(
                f"job spec field 'secrets.{what}': {value!r} names a Secret but the cluster settings define no "
                f"{what} Secret keys; give "
                f"{{name: {value}, keys: {{ENV_VAR: key}}}}"
            )
        try:
            return SecretRef(name=value, keys=default.keys, optional=default.optional)
        except ValidationError as exc:
            msg = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"job spec field 'secrets.{what}': {msg}") from None

    def resolved(self, cluster: ClusterSettings) -> list[tuple[str, SecretKeyEnv]]:
        """(env variable, Secret key) pairs for the container, in a stable order."""
        out: list[tuple[str, SecretKeyEnv]] = []
        for what, value, default in (
            ("object_store", self.object_store, cluster.object_store_secret),
            ("hf_token", self.hf_token, cluster.hf_token_secret),
        ):
            ref = self._resolve(value, default, what)
            if ref is not None:
                out += [
                    (env, SecretKeyEnv(secret=ref.name, key=key, optional=ref.optional))
                    for env, key in ref.keys.items()
                ]
        out += sorted(self.env.items())
        return out


class ElasticSettings(_Model):
    """Elastic training: the job runs on `min_nodes`..`max_nodes` nodes and survives losing some."""

    min_nodes: int = Field(ge=1)
    max_nodes: int = Field(ge=1)
    max_restarts: int = Field(default=3, ge=0, description="worker-group restarts before the job fails")

    @model_validator(mode="after")
    def _range(self) -> ElasticSettings:
        if self.max_nodes < self.min_nodes:
            raise ValueError(f"max_nodes ({self.max_nodes}) is below min_nodes ({self.min_nodes})")
        return self


class GangSettings(_Model):
    """Gang scheduling: all pods start together or none does (Volcano or scheduler-plugins). The cluster setting
    `gang_scheduler` is the default of every PyTorchJob; a job spec's `gang:` overrides it field by field
    (`gang: {queue: q}` keeps the cluster's scheduler) or opts the job out (`gang: {enabled: false}`)."""

    enabled: bool = Field(default=True, description="false: never gang-scheduled, whatever the cluster says")
    scheduler_name: str | None = Field(
        default=None, description="the pods' schedulerName; default: cluster.gang_scheduler, else volcano"
    )
    queue: str | None = None
    min_available: int | None = Field(default=None, ge=1, description="default: every replica")
    priority_class: str | None = None
    schedule_timeout_seconds: int | None = Field(default=None, ge=1)

    @field_validator("scheduler_name")
    @classmethod
    def _scheduler(cls, v: str | None) -> str | None:
        return None if v is None else check_dns_subdomain(v, "scheduler name")


class JobSpec(_Model):
    """A distributed training job (see the module docstring; shipped examples under `k8s/jobs/`)."""

    name: str = Field(description="DNS-1123 label: job name and checkpoint prefix")
    description: str = ""
    entrypoint: str = Field(default="sft", description="sft | rl | a dotted Python module")
    recipe: str = Field(description="shipped recipe name, YAML path, or file:// / s3:// URI")
    overrides: list[str] = Field(default_factory=list, description="recipe key=value overrides")
    image: str | None = Field(default=None, description="container image (default: cluster.trainer_image)")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    pool: str = Field(description="node pool name (cluster.node_pools)")
    nodes: int = Field(default=1, ge=1, description="nodes (pods); the first is the PyTorchJob's Master")
    nproc_per_node: int | None = Field(
        default=None, ge=1, description="processes per node; default: the GPUs per node (1 on CPU pools)"
    )
    gpus_per_node: int | None = Field(default=None, ge=0, description="default: all GPUs of a pool node")
    resources: Resources | None = Field(default=None, description="default: the pool's job_resources")
    shm_size: str | None = Field(
        default=None, description="memory-backed /dev/shm (<= the memory limit); default: the pool's"
    )
    nccl: NcclSettings = Field(default_factory=NcclSettings)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: JobSecrets = Field(default_factory=JobSecrets)
    service_account: str | None = Field(default=None, description="default: cluster.service_account")
    priority_class: str | None = None
    active_deadline_seconds: int = Field(
        default=DEFAULT_DEADLINE_S,
        ge=1,
        description="wall-clock limit of the job (runPolicy), default 7 days",
    )
    backoff_limit: int = Field(default=3, ge=0, le=100, description="pod restarts before the job fails")
    ttl_seconds_after_finished: int | None = Field(default=3 * 24 * 3600, ge=0)
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    restart_policy: Literal["OnFailure", "ExitCode", "Always", "Never"] = Field(
        default="ExitCode",
        description="ExitCode: a killed/preempted process (exit >= 128) is restarted, a config error (1) is not",
    )
    checkpoint_uri: str | None = Field(default=None, description="default: <checkpoints root>/<name>")
    elastic: ElasticSettings | None = None
    gang: GangSettings | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DNS1123_LABEL.match(v) or len(v) > MAX_NAME:
            raise ValueError(
                f"{v!r} is not a DNS-1123 label of at most {MAX_NAME} characters (lower-case letters, digits "
                "and '-', starting with a letter or digit and ending with one)"
            )
        return v

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, v: str) -> str:
        if v not in ENTRYPOINTS and not _MODULE.match(v):
            raise ValueError(f"{v!r} is neither {' nor '.join(ENTRYPOINTS)} nor a dotted Python module")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return None if v is None else check_image(v)

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, v: str | None) -> str | None:
        return _quantity(v, "shm_size")

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not ENV_NAME.match(k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
        return {k: str(x) for k, x in v.items()}

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                split_override(item)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("service_account", "priority_class")
    @classmethod
    def _k8s_name(cls, v: str | None) -> str | None:
        return None if v is None else check_dns_subdomain(v)

    @property
    def module(self) -> str:
        return ENTRYPOINTS.get(self.entrypoint, self.entrypoint)


def step_job_spec(
    entrypoint: str,
    run_id: str,
    *,
    recipe: str,
    overrides: list[str],
    pool: str,
    nodes: int,
    nproc_per_node: int,
    image: str,
    timeout_s: float = 0,
) -> JobSpec:
    """The job of a pipeline's launcher step: named `firm-<entrypoint>-<run id>` (cut to a valid name), one job per
    pipeline run — a restarted step finds its job again by this name; `nproc_per_node=0` and `image=""` mean the
    pool's / settings' defaults; `timeout_s` (0: the default deadline) is the job's `activeDeadlineSeconds`."""
    name = re.sub(r"[^a-z0-9-]", "-", f"firm-{entrypoint}-{run_id}".lower())[:MAX_NAME].strip("-")
    try:
        return JobSpec(
            name=name, entrypoint=entrypoint, recipe=recipe, overrides=list(overrides), pool=pool, nodes=nodes,
            nproc_per_node=nproc_per_node or None, image=image or None,
            active_deadline_seconds=int(timeout_s) if timeout_s and timeout_s >= 1 else DEFAULT_DEADLINE_S,
        )  # fmt: skip
    except ValidationError as exc:
        raise _field_error(f"of step {name}", exc) from None


# ------------------------------------------------------------------------------------------------ loading


def _field_error(source: str, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    return ConfigError(f"job spec {source}: field {loc!r}: {msg}")


def load_job_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a job spec YAML and apply `key=value` overrides (`recipe.<key>=v` goes to the recipe's overrides)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"job spec {p}: file does not exist")
    data = read_yaml_mapping(p, "job spec ")  # an empty file says so, not "field 'name' is missing"
    spec_overrides, recipe_overrides = [], []
    for item in overrides or []:
        key, value = split_override(item)
        if key.startswith("recipe."):
            recipe_overrides.append(f"{key.removeprefix('recipe.')}={value}")
        else:
            spec_overrides.append(item)
    data = apply_overrides(data, spec_overrides, JobSpec)
    if recipe_overrides:
        existing = data.get("overrides") or []
        data["overrides"] = [*existing, *recipe_overrides] if isinstance(existing, list) else existing
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise _field_error(str(p), exc) from None
    # a recipe given as a relative path is relative to the spec file when it is there
    rel = p.parent / spec.recipe
    if not Path(spec.recipe).is_absolute() and "://" not in spec.recipe and rel.is_file():
        spec.recipe = str(rel.resolve())
    return spec


# ------------------------------------------------------------------------------------------------ resolving


class ResolvedJob(BaseModel):
    """A job spec checked against its node pool and recipe: what every backend runs."""

    model_config = ConfigDict(extra="forbid")

    spec: JobSpec
    backend: Literal["local", "pytorchjob", "trainjob"] = Field(
        description="local, or a cluster backend (pytorchjob, trainjob): both resolve a job the same way"
    )
    pool: NodePool
    image: str
    nproc_per_node: int
    gpus_per_node: int
    world_size: int
    module: str
    config_ref: str = Field(description="what the pods pass to --config")
    upload: tuple[str, str] | None = Field(
        default=None, description="(local recipe file, URI) to upload before a cluster job starts"
    )
    checkpoint_uri: str
    args: list[str] = Field(description="the entrypoint's arguments after `-m <module>`")
    env: dict[str, str] = Field(description="plain environment of every process")
    secret_env: list[tuple[str, SecretKeyEnv]] = Field(default_factory=list)
    service_account: str | None = None
    settings_configmap: str | None = None
    resources: Resources = Field(default_factory=Resources, description="the spec's, else the pool's")
    gang: GangSettings | None = Field(
        default=None,
        description="gang scheduling of a cluster job (the spec's `gang:` over cluster.gang_scheduler; scheduler "
        "name and min_available filled in); None: none",
    )
    shm_size: str = Field(default="1Gi", description="the spec's, else the pool's, else a quarter of memory")
    image_pull_secrets: list[str] = Field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def command(self, python: str = "python") -> list[str]:
        """The container command (the local backend runs it with this interpreter)."""
        return [python, "-m", "firm.launch.torchrun_quiet", "-m", self.module, *self.args]


def _is_shipped(recipe: str) -> bool:
    from firm.recipes import recipe_path

    try:
        recipe_path(recipe)
    except ConfigError:
        return False
    return True


def _checkpoint_overrides(entrypoint: str, prefix: str, overrides: list[str]) -> list[str]:
    """Pin the run's checkpoint prefix (and, for SFT, where the final export is published)."""
    if entrypoint == "sft":
        out = [f"checkpoint.uri={prefix}/checkpoints"]
        if not any(o.split("=", 1)[0].strip() == "export.uri" for o in overrides):
            out.append(f"export.uri={prefix}/export")
        return out
    if entrypoint == "rl":
        return [f"output_uri={prefix}"]
    return []


def _check_world(spec: JobSpec, config_file: Path, overrides: list[str], world_sizes: list[int]) -> None:
    """Load the recipe with the overrides (unknown keys fail here) and check every world size against it."""
    try:
        if spec.entrypoint == "sft":
            from firm.critic.sft_config import load_sft_config

            sft = load_sft_config(config_file, overrides)
            per_step, what = sft.batch.global_size, "batch.global_size"
        else:
            from firm.rl.config import load_config

            rl = load_config(config_file, overrides)
            per_step, what = rl.sampling.prompts_per_step, "sampling.prompts_per_step"
    except ConfigError as exc:
        raise ConfigError(f"job spec field 'overrides' (recipe {spec.recipe}): {exc}") from None
    for w in world_sizes:
        if per_step is not None and per_step % w:
            raise ConfigError(
                f"job spec field 'nodes': the recipe's global batch {what}={per_step} is not divisible by the "
                f"world size {w} (nodes x nproc_per_node)"
            )
        if spec.entrypoint == "sft":
            try:
                sft.global_batch(w)
            except ConfigError as exc:
                raise ConfigError(f"job spec field 'overrides' (recipe {spec.recipe}): {exc}") from None


def _job_resources(spec: JobSpec, pool: NodePool) -> tuple[Resources, str]:
    """The container's resources and the `/dev/shm` size: the spec's, else the pool's `job_resources`. `/dev/shm`
    (an `emptyDir` with `medium: Memory`) counts against the container's memory limit: a size above the limit lets
    the pod be OOM-killed instead of a write failing, so it is refused here."""
    pr = pool.job_resources
    if spec.resources is not None:
        resources = spec.resources
    else:
        amounts = ResourceAmounts(cpu=pr.cpu, memory=pr.memory)
        resources = Resources(requests=amounts, limits=amounts)
    limit = resources.limits.memory
    shm = spec.shm_size or pr.shm_size
    if shm is None:  # a quarter of the memory limit, at most 16Gi
        shm = (
            "16Gi"
            if limit is None
            else f"{max(1, min(16 * 2**30, int(quantity_bytes(limit) / 4)) // 2**20)}Mi"
        )
    if limit is not None and quantity_bytes(shm) > quantity_bytes(limit):
        field = "shm_size" if spec.shm_size else f"pool {spec.pool!r} job_resources.shm_size"
        raise ConfigError(
            f"job spec field 'shm_size': {field} {shm} exceeds the memory limit resources.limits.memory={limit} "
            "(/dev/shm counts against it); lower shm_size or raise resources.limits.memory"
        )
    return resources, shm


def _gang(spec: JobSpec, cluster: ClusterSettings) -> GangSettings | None:
    """The job's gang scheduling: the cluster's `gang_scheduler` is the default, the spec's `gang:` overrides it
    (its unset fields fall back to the cluster's scheduler, else volcano, and every replica)."""
    g = spec.gang
    if g is None:
        g = GangSettings() if cluster.gang_scheduler else None
    if g is None or not g.enabled:
        return None
    return g.model_copy(
        update={
            "scheduler_name": g.scheduler_name or cluster.gang_scheduler or "volcano",
            "min_available": g.min_available or spec.nodes,
        }
    )


def resolve_job(
    spec: JobSpec, backend: Literal["local", "pytorchjob", "trainjob"], cluster: ClusterSettings | None = None
) -> ResolvedJob:
    """Check `spec` against its node pool and recipe and compute what the backend runs. Raises `ConfigError`."""
    from firm.config import get_settings

    settings = get_settings()
    cluster = cluster or settings.cluster
    pools = cluster.node_pools
    if spec.pool not in pools:
        raise ConfigError(
            f"job spec field 'pool': unknown node pool {spec.pool!r} (known: {', '.join(sorted(pools)) or 'none'}; "
            "pools are defined in the cluster settings)"
        )
    pool = pools[spec.pool]
    gpus = pool.gpus_per_node if spec.gpus_per_node is None else spec.gpus_per_node
    if gpus > pool.gpus_per_node:
        raise ConfigError(
            f"job spec field 'gpus_per_node': {gpus} GPUs per node, but nodes of pool {spec.pool!r} have "
            f"{pool.gpus_per_node}"
        )
    nproc = spec.nproc_per_node or (gpus if gpus > 0 else 1)
    if gpus > 0 and nproc != gpus:
        raise ConfigError(
            f"job spec field 'nproc_per_node': {nproc} processes per node on GPU pool {spec.pool!r} with "
            f"{gpus} GPUs per node; use one process per GPU (nproc_per_node = gpus_per_node)"
        )
    node_counts = [spec.nodes]
    if spec.elastic is not None:
        if not spec.elastic.min_nodes <= spec.nodes <= spec.elastic.max_nodes:
            raise ConfigError(
                f"job spec field 'nodes': {spec.nodes} is outside elastic.min_nodes..max_nodes "
                f"({spec.elastic.min_nodes}..{spec.elastic.max_nodes})"
            )
        node_counts = list(range(spec.elastic.min_nodes, spec.elastic.max_nodes + 1))
    if spec.gang is not None and spec.gang.min_available is not None and spec.gang.min_available > spec.nodes:
        raise ConfigError(
            f"job spec field 'gang.min_available': {spec.gang.min_available} exceeds the {spec.nodes} node(s)"
        )
    image = spec.image or cluster.trainer_image
    resources, shm_size = _job_resources(spec, pool)
    gang = _gang(spec, cluster) if backend != "local" else None

    root = (settings.bucket_uris()["checkpoints"] if backend == "local" else cluster.checkpoints_uri).rstrip(
        "/"
    )
    prefix = (spec.checkpoint_uri or f"{root}/{spec.name}").rstrip("/")
    if backend != "local" and not prefix.startswith("s3://"):
        raise ConfigError(
            f"job spec field 'checkpoint_uri': {prefix} is not reachable from cluster pods; use an s3:// URI "
            "(the object store the cluster settings name)"
        )
    secret_env = spec.secrets.resolved(cluster) if backend != "local" else []
    if backend != "local" and prefix.startswith("s3://"):
        names = {env for env, _ in secret_env}
        if not {"FIRM_S3_ACCESS_KEY", "FIRM_S3_SECRET_KEY"} <= names:
            raise ConfigError(
                "job spec field 'secrets.object_store': the job writes checkpoints to "
                f"{prefix} but names no Secret with the object store credentials (FIRM_S3_ACCESS_KEY, "
                "FIRM_S3_SECRET_KEY); set secrets.object_store to the Secret's name"
            )

    extra = _checkpoint_overrides(spec.entrypoint, prefix, spec.overrides)
    overrides = [*spec.overrides, *extra]
    from firm.recipes import resolve_config

    upload: tuple[str, str] | None = None
    config_ref = spec.recipe
    if spec.entrypoint in ENTRYPOINTS:
        try:
            config_file = resolve_config(spec.recipe)
        except ConfigError as exc:
            raise ConfigError(f"job spec field 'recipe': {exc}") from None
        world_sizes = [n * nproc for n in node_counts]
        _check_world(spec, config_file, overrides, world_sizes)
        local_file = Path(spec.recipe).expanduser()
        if backend != "local" and "://" not in spec.recipe and not _is_shipped(spec.recipe):
            config_ref = f"{prefix}/job/recipe.yaml"  # a local recipe travels with the job through the store
            upload = (str(local_file.resolve()), config_ref)
        elif backend == "local" and local_file.is_file():
            config_ref = str(local_file.resolve())

    env: dict[str, str] = {
        "FIRM_JOB_NAME": spec.name,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if backend != "local":
        env |= {
            "HOME": POD_WORKDIR,
            "FIRM_HOME": f"{POD_WORKDIR}/.firm",
            "HF_HOME": f"{POD_WORKDIR}/.cache/huggingface",
            "TORCH_EXTENSIONS_DIR": "/tmp/torch_extensions",
            "TRITON_CACHE_DIR": "/tmp/triton_cache",
        }
    if gpus > 0:
        env |= spec.nccl.env()
    env |= spec.env
    return ResolvedJob(
        spec=spec,
        backend=backend,
        pool=pool,
        image=image,
        nproc_per_node=nproc,
        gpus_per_node=gpus,
        world_size=spec.nodes * nproc,
        module=spec.module,
        config_ref=config_ref,
        upload=upload,
        checkpoint_uri=prefix,
        args=["--config", config_ref, "--resume", "auto", *overrides],
        env=env,
        secret_env=secret_env,
        service_account=spec.service_account or cluster.service_account,
        settings_configmap=cluster.settings_configmap if backend != "local" else None,
        resources=resources,
        shm_size=shm_size,
        gang=gang,
        image_pull_secrets=list(cluster.image_pull_secrets) if backend != "local" else [],
    )
