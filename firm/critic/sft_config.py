"""`SFTConfig`: the pydantic config of a critic SFT run, loaded from a recipe YAML plus `key=value` overrides.

Overrides use dotted keys into the config (`optim.lr=2e-5`, `batch.per_device=4`, `lora.target_modules=[q_proj]`);
values are parsed as YAML scalars/lists. An unknown key is a `ConfigError` that names the key and lists the valid
ones at that level, so a typo never silently trains with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from firm.errors import ConfigError, FirmError, InputError
from firm.overrides import apply_overrides as _apply_overrides
from firm.overrides import blame


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCfg(_Cfg):
    path: str = Field(
        description="HF id, local save_pretrained dir, or file:// / s3:// URI of the base critic"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="parameter dtype; auto = bfloat16 when precision is bf16 on GPU, else float32",
    )
    max_pixels: int | None = Field(
        default=None,
        ge=1,
        description="upper pixel bound per image; written into the critic's processor config (size.longest_edge), "
        "so training, eval, export and serving size images by one rule (firm.images.pixel_rule); null: the base "
        "processor's",
    )
    min_pixels: int | None = Field(
        default=None,
        ge=1,
        description="lower pixel bound per image (size.shortest_edge), like max_pixels; null: the base processor's. "
        "A rubric pack's own images.min_pixels / max_pixels take precedence, in training and serving alike",
    )
    freeze_vision_tower: bool = Field(
        default=False,
        description="keep the vision encoder (patch/position embeddings, blocks, Qwen3-VL's deepstack mergers) "
        "fixed: no gradients, not in the optimizer, no LoRA adapters. LLaMA-Factory's default (freeze_vision_tower), "
        "which the paper recipes set; false trains it",
    )
    freeze_merger: bool = Field(
        default=False,
        description="keep the vision-language merger (visual.merger, LLaMA-Factory's multi-modal projector) fixed; "
        "LLaMA-Factory's default (freeze_multi_modal_projector), which the paper recipes set",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="activation checkpointing: recompute each layer in backward (memory for time)",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ModelCfg:
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ConfigError(
                f"model.min_pixels={self.min_pixels} is above model.max_pixels={self.max_pixels}"
            )
        return self


class DataCfg(_Cfg):
    dataset: str = Field(description="critic SFT dataset: local dir or published file:// / s3:// URI")
    on_bad_row: Literal["reject", "skip"] = "reject"
    check_images: bool = True
    max_seq_len: int | None = Field(
        default=None,
        ge=16,
        description="longest tokenized row (prompt + image tokens + answer) allowed; a longer row is an error naming "
        "it (never truncated: that would cut the answer); size it with model.max_pixels",
    )
    tasks: list[Literal["edit", "gen"]] | None = None
    axes: list[Literal["execution", "consistency", "instruction", "quality"]] | None = None
    encode_cache_mb: int = Field(
        default=0,
        ge=0,
        description="keep each process's encoded train rows (token ids, labels, pixel values) in memory up to this "
        "many MiB, so later epochs skip image decoding and the processor; 0 = off. For small datasets on CPU, "
        "where the processor is a quarter of a step (tiny critic: 0.13 of 0.56 s); real images are MBs per row",
    )


class LoraCfg(_Cfg):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    merge_on_export: bool = True


class BatchCfg(_Cfg):
    """Rows per optimizer step = `per_device × grad_accum × world size` (checked against `global_size`), with or
    without packing. Unpacked, each process runs `grad_accum` micro-batches of `per_device` rows. With
    `packing: token_budget` each process still takes `per_device × grad_accum` rows per step, but cuts them into
    length-grouped micro-batches of at most `max_tokens_per_batch` padded tokens (see `firm.critic.packing`)."""

    per_device: int = Field(
        default=1,
        ge=1,
        description="micro-batch size per process (with packing: rows per process = × grad_accum)",
    )
    grad_accum: int = Field(default=1, ge=1)
    global_size: int | None = Field(
        default=None, ge=1, description="expected per_device × grad_accum × world size; checked at start"
    )
    packing: Literal["none", "token_budget"] = Field(
        default="none",
        description="token_budget: micro-batches of as many length-grouped rows as fit max_tokens_per_batch (padded "
        "rows, not concatenated sequences), loss normalised per learned token over the whole step",
    )
    max_tokens_per_batch: int | None = Field(
        default=None,
        ge=16,
        description="packing=token_budget: most padded tokens (rows × longest row, image tokens included) in one "
        "micro-batch; at least the longest row",
    )


class OptimCfg(_Cfg):
    lr: float = Field(default=1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    max_grad_norm: float | None = Field(default=1.0, description="gradient clipping; null disables")


class EvalCfg(_Cfg):
    every_n_steps: int = Field(default=0, ge=0, description="0 = only at the end")
    max_samples: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1)
    generate: bool = Field(default=True, description="also generate and report parse rate and score MAE")
    max_new_tokens: int = Field(default=128, ge=1)


class CheckpointCfg(_Cfg):
    uri: str | None = Field(
        default=None, description="root of this run's checkpoints; default <checkpoints bucket>/<run_name>"
    )
    every_n_steps: int = Field(default=0, ge=0, description="0 = only at the end")
    keep_last: int = Field(default=2, ge=1)


class DistCfg(_Cfg):
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    zero_stage: Literal[2, 3] = 2
    offload_optimizer: bool = Field(default=False, description="DeepSpeed: optimizer state in CPU memory")
    offload_param: bool = Field(default=False, description="DeepSpeed ZeRO-3: parameters in CPU memory")


class ExportCfg(_Cfg):
    enabled: bool = True
    uri: str | None = Field(default=None, description="also publish the exported model here")


class SFTConfig(_Cfg):
    """A critic SFT run (see firm/recipes/critic/*.yaml for the shipped ones)."""

    run_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    rubrics: str = Field(
        default="firm-v1",
        description="rubric pack whose student prompts the critic learns to answer (name, YAML path or URI); "
        "its name and sha256 are recorded in checkpoints and in the export (firm_rubrics.json)",
    )
    output_dir: str = Field(default="runs", description="local run dir parent: metrics, TensorBoard, export")
    seed: int = 42
    finetune: Literal["full", "lora"] = "full"
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="bf16 autocast where supported (CUDA with bf16); auto = bf16 on such GPUs"
    )
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    log_every: int = Field(default=1, ge=1)
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU intra-op threads per process (torch.set_num_threads); null = default",
    )
    resume: str = Field(
        default="none", description="none | auto (newest complete checkpoint) | checkpoint URI"
    )
    model: ModelCfg
    data: DataCfg
    lora: LoraCfg = Field(default_factory=LoraCfg)
    batch: BatchCfg = Field(default_factory=BatchCfg)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    checkpoint: CheckpointCfg = Field(default_factory=CheckpointCfg)
    dist: DistCfg = Field(default_factory=DistCfg)
    export: ExportCfg = Field(default_factory=ExportCfg)

    @model_validator(mode="after")
    def _supported(self) -> SFTConfig:
        if self.dist.strategy == "deepspeed" and self.dist.zero_stage == 3 and self.finetune == "lora":
            raise ConfigError(
                "finetune=lora with DeepSpeed ZeRO-3 is not supported (the adapter cannot be merged while the base "
                "weights are partitioned); use ZeRO-2 or DDP for LoRA"
            )
        if self.dist.offload_param and (self.dist.strategy != "deepspeed" or self.dist.zero_stage != 3):
            raise ConfigError("dist.offload_param needs dist.strategy=deepspeed and dist.zero_stage=3")
        if self.dist.offload_optimizer and self.dist.strategy != "deepspeed":
            raise ConfigError("dist.offload_optimizer needs dist.strategy=deepspeed")
        b = self.batch
        if b.packing == "token_budget" and b.max_tokens_per_batch is None:
            raise ConfigError(
                "batch.packing=token_budget needs batch.max_tokens_per_batch (the most padded tokens, rows × longest "
                "row, one micro-batch may hold)"
            )
        if b.packing == "none" and b.max_tokens_per_batch is not None:
            raise ConfigError(
                f"batch.max_tokens_per_batch={b.max_tokens_per_batch} is only used with batch.packing=token_budget "
                "(unpacked micro-batches hold batch.per_device rows); set batch.packing=token_budget or remove it"
            )
        if (
            b.max_tokens_per_batch is not None
            and self.data.max_seq_len is not None
            and b.max_tokens_per_batch < self.data.max_seq_len
        ):
            raise ConfigError(
                f"batch.max_tokens_per_batch={b.max_tokens_per_batch} is below data.max_seq_len="
                f"{self.data.max_seq_len}: a row of the allowed length would fit no micro-batch; raise "
                "batch.max_tokens_per_batch or lower data.max_seq_len"
            )
        return self

    def checkpoint_root(self) -> str:
        """Where this run's checkpoints go: `checkpoint.uri`, else `<checkpoints bucket>/<run_name>`."""
        from firm.config import get_settings

        return self.checkpoint.uri or f"{get_settings().bucket_uris()['checkpoints']}/{self.run_name}"

    def global_batch(self, world_size: int) -> int:
        """Rows per optimizer step; raises `ConfigError` when it disagrees with `batch.global_size`."""
        g = self.batch.per_device * self.batch.grad_accum * world_size
        if self.batch.global_size is not None and g != self.batch.global_size:
            raise ConfigError(
                f"batch.global_size={self.batch.global_size} is not batch.per_device ({self.batch.per_device}) × "
                f"batch.grad_accum ({self.batch.grad_accum}) × world size ({world_size}) = {g}; the world size "
                f"must divide the global batch into per_device × grad_accum per process"
            )
        return g


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a raw config mapping, rejecting keys `SFTConfig` does not have."""
    return _apply_overrides(data, overrides, SFTConfig)


def load_sft_config(config: str | Path, overrides: list[str] | None = None) -> SFTConfig:
    """Load a recipe (a YAML path or a shipped recipe name like `critic/tiny_cpu`) and apply overrides."""
    from firm.overrides import read_yaml_mapping
    from firm.recipes import resolve_config

    path = resolve_config(str(config))
    data = read_yaml_mapping(path)
    data = apply_overrides(data, list(overrides or []))
    try:
        return SFTConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        where = blame(loc, overrides, str(path))  # the override the user typed, not the recipe it overrides
        if err.get("type") == "extra_forbidden":
            raise ConfigError(f"{where}: unknown config key {loc!r}") from None
        raise ConfigError(f"{where}: invalid config at {loc or '(top level)'}: {err.get('msg')}") from None


def check_fresh_run(cfg: SFTConfig) -> None:
    """A fresh run (`resume=none`) must not write into a checkpoint root that already holds a run: it would append
    to that run's metrics and prune old and new checkpoints together. (What every rank checks; `firmctl critic
    train` refuses any non-empty target first, see `check_targets`.)"""
    if cfg.resume != "none":
        return
    from firm.errors import MissingBucketError
    from firm.storage import latest
    from firm.storage.targets import exists_message

    root = cfg.checkpoint_root()
    try:
        found = latest(root)
    except MissingBucketError:  # the run's first checkpoint creates the bucket
        return
    if found is not None:
        raise ConfigError(exists_message(f"run {cfg.run_name}: checkpoints", root, resume="--resume auto"))


def run_dir(cfg: SFTConfig) -> Path:
    """The run's local folder (metrics, TensorBoard, export): `output_dir/run_name`."""
    return Path(cfg.output_dir).expanduser().resolve() / cfg.run_name


def check_targets(cfg: SFTConfig, *, overwrite: bool = False) -> list[str]:
    """The shared refusal (`firm.storage.targets`) of a fresh run (`resume=none`) into a non-empty checkpoint root,
    run folder or export URI; returns those `overwrite` replaces (the caller clears them after its other checks)."""
    if cfg.resume != "none":
        return []
    from firm.storage.targets import check_target

    targets = [(f"run {cfg.run_name}: checkpoints", cfg.checkpoint_root()), ("run folder", str(run_dir(cfg)))]
    if cfg.export.uri:
        targets.append(("export.uri", cfg.export.uri))
    return [t for what, t in targets if check_target(t, what, overwrite=overwrite, resume="--resume auto")]


def preflight(cfg: SFTConfig, world_size: int, *, overwrite: bool = False) -> None:
    """What can be checked before any training process starts (`firmctl critic train`), so a mistake is one
    `error:` line instead of one per rank: the world size against the global batch, object-store credentials for
    every s3:// location, a local base model directory, the rubric pack, and the dataset (its dataset.json; a
    published dataset is fetched and verified into the local cache here, where the workers then find it)."""
    from firm.rubric_store import load_pack
    from firm.storage import check_store_access
    from firm.storage.targets import clear_target

    replace = check_targets(cfg, overwrite=overwrite)  # first: a refusal costs nothing
    cfg.global_batch(world_size)
    try:
        load_pack(cfg.rubrics)
    except FirmError as exc:
        raise InputError(f"rubrics={cfg.rubrics}: {exc}") from None
    check_store_access(
        {
            "data.dataset": cfg.data.dataset,
            "model.path": cfg.model.path,
            "checkpoint.uri": cfg.checkpoint.uri,
            "export.uri": cfg.export.uri,
        }
    )
    from firm.curation.dataset import INFO_FILE

    data = cfg.data.dataset
    if "://" in data:
        from firm.storage import resolve_local

        root = Path(resolve_local(data))
    else:
        root = Path(data).expanduser()
    if not (root / INFO_FILE).is_file():
        what = "no such directory" if not root.is_dir() else f"not a critic SFT dataset (no {INFO_FILE})"
        raise InputError(f"data.dataset={data}: {what}")
    from firm.storage.model_ref import check_model_ref

    # a mistyped local model path fails here, before any rank starts (never looked up as a Hugging Face id)
    model = check_model_ref(cfg.model.path, "model.path")
    if "://" not in model and Path(model).expanduser().exists() and not Path(model).expanduser().is_dir():
        raise InputError(f"model.path={model}: not a directory")
    check_fresh_run(cfg)
    for target in replace:
        clear_target(target)
