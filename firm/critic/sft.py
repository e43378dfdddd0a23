"""Critic SFT: teach a Qwen-VL critic to answer in the rubric's format with the right score.

    python -m firm.critic.sft --config critic/tiny_cpu [--resume auto] [key=value ...]
    torchrun --nproc_per_node 8 -m firm.critic.sft --config critic/qwen3vl_8b_edit_full

One entrypoint for a laptop CPU, local torchrun and a PyTorchJob: rank, world size and master address come from the
standard torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). The loop:

- next-token cross-entropy on the assistant response only (`firm.critic.collate`), micro-batches grouped by image
  count, a deterministic data order derived from (seed, epoch, step) so resumed runs see the same data;
- or, with `batch.packing: token_budget`, the same global batch per step cut into length-grouped micro-batches of at
  most `batch.max_tokens_per_batch` padded tokens (bucketing, not concatenation), the loss normalised per learned
  token over the whole step so the update does not depend on the split (`firm.critic.packing`);
- the vision tower and merger frozen or trained (`model.freeze_vision_tower`, `model.freeze_merger`; the paper
  recipes freeze both, LLaMA-Factory's default) and the recipe's pixel bounds written into the processor, so the
  collator, the eval and the exported critic size images by one rule (`firm.critic.sft_model`, `firm.images`);
- DDP (gloo on CPU, nccl on GPU) or DeepSpeed ZeRO-2/3; full fine-tune or LoRA (peft); gradient accumulation,
  clipping, cosine schedule with warmup ratio, bf16 autocast where supported;
- eval on the val split every N steps: loss, and with the `Critic`'s batched generation the parse rate and the MAE
  of the parsed score vs the target next to the majority-class baseline's MAE on the same parsed items
  (`val/mae_parsed`, `val/baseline_mae_parsed`; parse failures count in neither, see `val/parse_rate`);
- checkpoints published atomically to `<checkpoints>/<run>/step-<n>/` (see `firm.critic.sft_checkpoint`), keep
  last K, `--resume auto`; metrics JSONL + TensorBoard in the run dir; a Rich progress bar on rank 0;
- export: a `save_pretrained` directory (LoRA merged) that `Critic.from_pretrained` loads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field, field_validator

from firm.critic.sft_config import SFTConfig, check_fresh_run, load_sft_config
from firm.critic.sft_config import run_dir as sft_run_dir
from firm.errors import ConfigError, FirmError, InputError

log = logging.getLogger("firm.critic.sft")
# Test hook: every rank SIGKILLs itself right after checkpoint step-<value> is published (a deterministic preemption
# for the kill -9 + `--resume auto` tests). Never set it in a real run.
KILL_AFTER_CHECKPOINT_ENV = "FIRM_SFT_TEST_KILL_AFTER_CHECKPOINT"


@dataclass
class DistEnv:
    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device
    bf16: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


class TrainResult(BaseModel):
    """What a finished run produced."""

    run_dir: Path
    steps: int
    final_eval: dict[str, float | None] = Field(
        description="the last evaluation; null where undefined (e.g. val/mae_parsed when no answer parsed)"
    )
    export_dir: Path | None
    checkpoints: list[str]
    resumed_from: str | None = None
    skipped_rows: int = 0
    rubrics: str = ""  # the rubric pack trained on, name@sha256[:12]

    @field_validator("final_eval", mode="before")
    @classmethod
    def _undefined_is_null(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: None if isinstance(x, float) and math.isnan(x) else x for k, x in v.items()}
        return v


# ----------------------------------------------------------------------------------------------- distributed


def dist_env(cfg: SFTConfig) -> DistEnv:
    """Rank/world from the torch.distributed environment (torchrun / PyTorchJob); defaults to one process."""

    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name, str(default))
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None

    world, rank, local = env_int("WORLD_SIZE", 1), env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    cuda = torch.cuda.is_available()
    backend = cfg.dist.backend if cfg.dist.backend != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl" and not cuda:
        raise ConfigError("dist.backend=nccl needs CUDA GPUs; use gloo on CPU")
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    return DistEnv(rank=rank, world=world, local_rank=local, backend=backend, device=device)


def _skip_shm_comm_build() -> None:
    """DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce op (g++, Python headers) when its process
    group starts — 25 s on a quiet 2-core machine, 60 s or more on a busy one, on every fresh machine or container, and
    a failure where no compiler exists. The op serves only `inference_all_reduce`; training's all-reduce is gloo's
    (`deepspeed/comm/torch.py`, `TorchBackend.all_reduce` vs `inference_all_reduce`). Critic SFT on CPU therefore
    starts DeepSpeed without it; GPU runs never build it (their accelerator has no such op)."""
    import importlib

    # by module name: `deepspeed.comm.torch` as an attribute of `deepspeed.comm` is the torch package itself
    backend = importlib.import_module("deepspeed.comm.torch")
    backend.build_shm_op = lambda: None


def init_distributed(env: DistEnv, cfg: SFTConfig) -> None:
    """Initialise the process group when needed (DeepSpeed joins one that exists)."""
    import torch.distributed as dist

    from firm.processes import before_process_group

    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    before_process_group()
    if cfg.dist.strategy == "deepspeed":
        import deepspeed

        if env.world == 1:  # plain `python -m` without torchrun: a one-process group on loopback
            from firm.processes import free_port

            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        if env.device.type == "cpu":
            _skip_shm_comm_build()
        deepspeed.init_distributed(dist_backend=env.backend)
    elif env.world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=env.backend)


def barrier(env: DistEnv) -> None:
    import torch.distributed as dist

    if dist.is_initialized() and env.world > 1:
        dist.barrier()


def all_mean(value: float, env: DistEnv) -> float:
    import torch.distributed as dist

    if not dist.is_initialized() or env.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device if env.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / env.world


# ----------------------------------------------------------------------------------------------- model


def _use_bf16(cfg: SFTConfig, env: DistEnv) -> bool:
    gpu_bf16 = env.device.type == "cuda" and torch.cuda.is_bf16_supported()
    if cfg.precision == "bf16":
        return True  # CUDA, or CPU autocast (slower on most CPUs, but supported)
    return cfg.precision == "auto" and gpu_bf16


def _param_dtype(cfg: SFTConfig, bf16: bool) -> torch.dtype:
    if cfg.model.dtype == "bfloat16":
        return torch.bfloat16
    if cfg.model.dtype == "float32":
        return torch.float32
    return torch.bfloat16 if (bf16 and cfg.dist.strategy == "deepspeed") else torch.float32


def load_model(cfg: SFTConfig, dtype: torch.dtype, resume_dir: Path | None) -> tuple[Any, Any]:
    """The trainable model (full, or base + LoRA adapter) and its processor, with the recipe's vision freezing and
    pixel bounds applied (`firm.critic.sft_model`)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from firm.critic.critic import load_processor, resolve_model_source
    from firm.critic.sft_model import apply_pixel_bounds, freeze_vision, lora_target_modules

    base_path = resolve_model_source(cfg.model.path)
    full_from = str(resume_dir) if (resume_dir is not None and cfg.finetune == "full") else base_path
    try:
        config = AutoConfig.from_pretrained(full_from)
    except (OSError, ValueError) as exc:  # ValueError: a directory without a usable config.json
        reason = " ".join(str(exc).split())  # one line: HF's messages span several
        raise InputError(f"model.path {cfg.model.path}: cannot load a model config ({reason})") from None
    model = AutoModelForImageTextToText.from_pretrained(full_from, dtype=dtype)
    processor = load_processor(base_path, config.model_type)
    apply_pixel_bounds(processor, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels)
    tower, merger = cfg.model.freeze_vision_tower, cfg.model.freeze_merger
    if cfg.finetune == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume_dir is not None:
            model = PeftModel.from_pretrained(model, str(resume_dir), is_trainable=True)
        else:
            lc = cfg.lora
            try:
                targets = lora_target_modules(model, lc.target_modules, tower=tower, merger=merger)
            except ConfigError as exc:
                raise ConfigError(f"{exc} ({cfg.model.path})") from None
            model = get_peft_model(
                model,
                LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets),
            )
    else:
        freeze_vision(model, tower=tower, merger=merger)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if cfg.finetune == "lora":
            model.enable_input_require_grads()
    model.train()
    return model, processor


def make_optimizer(model: Any, cfg: SFTConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only: frozen vision parts and LoRA base weights are not in it."""
    from firm.critic.sft_model import trainable_parameters

    return torch.optim.AdamW(
        trainable_parameters(model),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )


def _unwrap(model: Any) -> Any:
    return model.module if hasattr(model, "module") else model


# ----------------------------------------------------------------------------------------------- data


def load_rows(cfg: SFTConfig) -> tuple[Any, list[Any], list[Any]]:
    from firm.curation.dataset import read_sft_dataset

    ds = read_sft_dataset(
        cfg.data.dataset, on_bad_row=cfg.data.on_bad_row, check_images=cfg.data.check_images
    )
    rows = [
        r
        for r in ds.rows
        if (cfg.data.tasks is None or r.task in cfg.data.tasks)
        and (cfg.data.axes is None or r.axis in cfg.data.axes)
    ]
    train = [r for r in rows if r.split == "train"]
    val = [r for r in rows if r.split == "val"]
    if cfg.eval.max_samples is not None:
        val = val[: cfg.eval.max_samples]
    if not train:
        raise InputError(f"dataset {cfg.data.dataset}: no train rows (after the tasks/axes filter)")
    return ds, train, val


def step_micro_batches(
    train: list[Any], cfg: SFTConfig, env: DistEnv, step: int, steps_per_epoch: int
) -> tuple[int, list[list[int]]]:
    """(epoch, this rank's grad_accum micro-batches) for optimizer step `step` (0-based)."""
    from firm.critic.collate import pack_by_image_count

    epoch, within = divmod(step, steps_per_epoch)
    batches = pack_by_image_count(train, cfg.batch.per_device, seed=cfg.seed, epoch=epoch)
    per_step = env.world * cfg.batch.grad_accum
    mine = [batches[within * per_step + a * env.world + env.rank] for a in range(cfg.batch.grad_accum)]
    return epoch, mine


# ----------------------------------------------------------------------------------------------- eval


def evaluate(
    model: Any,
    processor: Any,
    collator: Any,
    val: list[Any],
    cfg: SFTConfig,
    env: DistEnv,
    train_scores: Counter,
) -> dict[str, float]:
    """Val loss, and (generation) the parse rate, the MAE of the parsed score vs the target and the majority-class
    baseline's MAE, both over the answers that parsed (`val/mae_parsed`, `val/baseline_mae_parsed`)."""
    from firm.critic.critic import Critic, CriticRequest

    net = _unwrap(model)
    was_training = net.training
    net.eval()
    metrics: dict[str, float] = {}
    try:
        total, count = 0.0, 0
        with torch.no_grad():
            for k in range(0, len(val), cfg.eval.batch_size):
                chunk = val[k : k + cfg.eval.batch_size]
                batch = {n: t.to(env.device) for n, t in collator(chunk).items()}
                with _autocast(cfg, env):
                    loss = net(**batch).loss
                total += float(loss) * len(chunk)
                count += len(chunk)
        metrics["val/loss"] = total / max(count, 1)
        if cfg.eval.generate:
            critic = Critic(  # pixel bounds: the processor's, which carry the recipe's (as the export will)
                net, processor, max_new_tokens=cfg.eval.max_new_tokens, rubrics=collator.pack
            )
            requests = [
                CriticRequest(
                    task=r.task,
                    axis=r.axis,
                    images=[collator.dataset.image_ref(i) for i in r.images],
                    instruction=r.instruction,
                    prompt=r.prompt,
                    sample_id=r.id,
                )
                for r in val
            ]
            judgements = critic.judge(requests, batch_size=cfg.eval.batch_size)
            predictions = [j.score if j.ok else None for j in judgements]
            majority = _unkey(train_scores.most_common(1)[0][0])
            metrics.update(score_metrics(predictions, [r.score for r in val], majority))
    finally:
        if was_training:
            net.train()
    return metrics


def score_metrics(predictions: list[Any], targets: list[Any], majority: Any) -> dict[str, float]:
    """Parse rate, and the critic's and the majority-class baseline's MAE over the SAME items: those whose answer
    parsed (`predictions[i]` not None). Parse failures count in neither MAE (they lower `val/parse_rate`), so the
    critic is never compared with a baseline scored on other rows. NaN where nothing parsed."""
    ok = [(p, t) for p, t in zip(predictions, targets, strict=True) if p is not None]
    nan = float("nan")
    mae = sum(_abs_err(p, t) for p, t in ok) / len(ok) if ok else nan
    baseline = sum(_abs_err(majority, t) for _, t in ok) / len(ok) if ok else nan
    return {
        "val/parse_rate": len(ok) / len(targets) if targets else nan,
        "val/mae_parsed": mae,
        "val/baseline_mae_parsed": baseline,
        "val/mae": mae,  # the earlier name of val/mae_parsed, kept as an alias
    }


def _key(score: Any) -> Any:
    return tuple(score) if isinstance(score, list) else score


def _unkey(score: Any) -> Any:
    return list(score) if isinstance(score, tuple) else score


def _abs_err(pred: Any, target: Any) -> float:
    if isinstance(target, list):
        return sum(abs(a - b) for a, b in zip(pred, target, strict=True)) / len(target)
    return float(abs(pred - target))


def _autocast(cfg: SFTConfig, env: DistEnv) -> Any:
    if env.bf16:
        return torch.autocast(device_type=env.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------- metrics


class MetricLogger:
    """metrics.jsonl + TensorBoard in the run dir (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        assert self.tb is not None
        for k, v in values.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


# ----------------------------------------------------------------------------------------------- training


def _schedule(optimizer: Any, cfg: SFTConfig, total_steps: int) -> Any:
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    warmup = math.ceil(cfg.optim.warmup_ratio * total_steps)
    if cfg.optim.scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def _deepspeed_config(cfg: SFTConfig, env: DistEnv, bf16: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": cfg.dist.zero_stage}
    if cfg.dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": env.device.type == "cuda"}
    if cfg.dist.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": env.device.type == "cuda"}
    return {
        "train_micro_batch_size_per_gpu": cfg.batch.per_device,
        "gradient_accumulation_steps": cfg.batch.grad_accum,
        "train_batch_size": cfg.batch.per_device * cfg.batch.grad_accum * env.world,
        "gradient_clipping": cfg.optim.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def accumulate_step(
    model: Any,
    engine: Any,
    batches: Iterable[dict[str, torch.Tensor]],
    n: int,
    *,
    cfg: SFTConfig,
    env: DistEnv,
    step_labels: int | None = None,
) -> tuple[float, int]:
    """Forward and backward over the `n` micro-batches of one optimizer step; under DeepSpeed also the step itself
    (`engine.step()` after each micro-batch; it updates on the boundary). Returns (sum of the micro-batch losses,
    non-padding tokens). Without DeepSpeed the caller clips, steps and zeroes the gradients.

    Unpacked (`step_labels` None): each loss is its micro-batch's token mean, scaled by 1/grad_accum (DeepSpeed
    scales by its gradient_accumulation_steps). Packed: `step_labels` = the learned tokens of the whole global batch,
    so each loss is its micro-batch's token sum / step_labels (`num_items_in_batch`), scaled by the world size
    (DDP and DeepSpeed average over ranks): the accumulated gradient is that of the global batch's token mean
    whatever `n` is; DeepSpeed's accumulation boundary is set here, on the last micro-batch."""
    packed = step_labels is not None
    extra = {"num_items_in_batch": step_labels} if packed else {}
    loss_sum, tokens = 0.0, 0
    for a, batch in enumerate(batches):
        batch = {k: v.to(env.device) for k, v in batch.items()}
        tokens += int(batch["attention_mask"].sum())
        last = a == n - 1
        if engine is not None:
            if packed:
                engine.set_gradient_accumulation_boundary(last)
            with _autocast(cfg, env):
                loss = engine(**batch, **extra).loss
            if packed:
                engine.backward(loss * env.world, scale_wrt_gas=False)
            else:
                engine.backward(loss)
            engine.step()
        else:
            sync = contextlib.nullcontext() if (last or env.world == 1) else model.no_sync()
            with sync:
                with _autocast(cfg, env):
                    loss = model(**batch, **extra).loss
                (loss * env.world if packed else loss / cfg.batch.grad_accum).backward()
        loss_sum += float(loss.detach())
    return loss_sum, tokens


def _checked_batch(
    batch: dict[str, torch.Tensor], plan: Any, a: int, idx: list[int], rows: list[Any]
) -> dict[str, torch.Tensor]:
    """Packed runs: the collated micro-batch must hold the tokens its plan measured (the budget and the loss
    normaliser rely on them)."""
    if plan is None:
        return batch
    from firm.critic.collate import IGNORE_INDEX

    tokens, labels = int(batch["attention_mask"].sum()), int((batch["labels"] != IGNORE_INDEX).sum())
    if (tokens, labels) != (plan.tokens[a], plan.labels[a]):
        ids = ", ".join(f"{rows[i].id} ({rows[i].axis})" for i in idx)
        raise FirmError(
            f"rows {ids}: collated to {tokens} tokens / {labels} learned, but measured {plan.tokens[a]} / "
            f"{plan.labels[a]} (SFTCollator.measure disagrees with encode for this processor; use batch.packing=none)"
        )
    return batch


def _progress(enabled: bool, run_name: str, total: int, start: int) -> Any:
    """Rank 0's progress on stderr: a bar on a terminal, a line every FIRM_PROGRESS_INTERVAL seconds elsewhere."""
    from firm.progress import Progress

    return Progress(f"critic sft {run_name}", total=total, completed=start, enabled=enabled)


def train(cfg: SFTConfig) -> TrainResult:
    """Run (or resume) a critic SFT run described by `cfg`; see the module docstring.

    A process group this creates ends once the run's frame is gone (`firm.processes.end_process_group`): the model,
    its DDP reducer or DeepSpeed engine (`release_engine`) hold the group's backend until then. After a failure the
    traceback still holds them, and the group ends at exit with the failed job. A group the caller made is left to
    the caller."""
    import torch.distributed as dist

    from firm.processes import end_process_group

    callers = dist.is_available() and dist.is_initialized()
    try:
        return _train(cfg)
    finally:
        if not callers:
            end_process_group()


def _train(cfg: SFTConfig) -> TrainResult:
    from firm.critic.collate import SFTCollator, pack_by_image_count
    from firm.critic.sft_checkpoint import (
        CheckpointWriter,
        LoadedCheckpoint,
        TrainerState,
        check_compatible,
        fetch_checkpoint,
        find_checkpoint,
        gather_rng_states,
        gather_uploads,
        load_checkpoint,
        load_zero_shard,
        restore_rng_state,
        save_zero_shard,
        zero_shard_name,
    )
    from firm.rubric_store import load_pack

    env = dist_env(cfg)
    global_batch = cfg.global_batch(env.world)  # fails fast, before any process group or model
    pack = load_pack(cfg.rubrics)
    ckpt_root = cfg.checkpoint_root()
    check_fresh_run(cfg)
    run_dir = sft_run_dir(cfg)  # made once training starts

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ds, train_rows, val_rows = load_rows(cfg)
    packing = cfg.batch.packing == "token_budget"
    if packing:  # every step takes global_batch rows of one shuffled epoch order (firm.critic.packing)
        steps_per_epoch = len(train_rows) // global_batch
    else:
        steps_per_epoch = len(
            pack_by_image_count(train_rows, cfg.batch.per_device, seed=cfg.seed, epoch=0)
        ) // (env.world * cfg.batch.grad_accum)
    if steps_per_epoch == 0:
        why = "" if packing else " (micro-batches are grouped by image count)"
        raise InputError(
            f"dataset {cfg.data.dataset}: {len(train_rows)} train rows do not fill one global batch of "
            f"{global_batch}{why}"
        )
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    deepspeed_run = cfg.dist.strategy == "deepspeed"
    zero_stage = cfg.dist.zero_stage if deepspeed_run else None
    resume_uri = find_checkpoint(cfg.resume, ckpt_root)
    ckpt: LoadedCheckpoint | None = None
    if resume_uri is not None:
        # DeepSpeed: every rank fetches the shared files and its own ZeRO shard; all of it sha256-verified
        ckpt = fetch_checkpoint(resume_uri, env.rank) if deepspeed_run else load_checkpoint(resume_uri)
        try:
            check_compatible(
                ckpt,
                world_size=env.world,
                global_batch=global_batch,
                finetune=cfg.finetune,
                rubrics_sha256=pack.sha256,
                strategy=cfg.dist.strategy,
                zero_stage=zero_stage,
                packing=cfg.batch.packing,
            )
        except BaseException:
            ckpt.release()
            raise

    logger: MetricLogger | None = None
    engine = None
    try:
        init_distributed(env, cfg)
        bf16 = env.bf16 = _use_bf16(cfg, env)
        model, processor = load_model(cfg, _param_dtype(cfg, bf16), ckpt.model_dir if ckpt else None)
        model.to(env.device)
        collator = SFTCollator(
            processor,
            ds,
            pack=pack,
            max_seq_len=cfg.data.max_seq_len,
            cache_bytes=cfg.data.encode_cache_mb << 20,
        )
        planner = None
        if packing:
            from firm.critic.packing import TokenBudgetPlanner, check_budget, measure_rows

            t_measure = time.perf_counter()
            sizes = measure_rows(
                collator, train_rows, rank=env.rank, world=env.world,
                device=env.device if env.backend == "nccl" else None,
            )  # fmt: skip
            budget = cfg.batch.max_tokens_per_batch
            assert budget is not None  # SFTConfig requires it with packing
            check_budget(train_rows, sizes, budget)
            planner = TokenBudgetPlanner(
                sizes, global_batch=global_batch, world=env.world, budget=budget, seed=cfg.seed
            )
            if env.main:
                log.info(
                    "token-budget micro-batches: %d train rows measured in %.1f s (longest %d tokens), budget %d",
                    len(sizes), time.perf_counter() - t_measure, max(z.tokens for z in sizes), budget,
                )  # fmt: skip
        optimizer = make_optimizer(model, cfg)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        scheduler = _schedule(optimizer, cfg, total_steps)
        start_step = 0
        if ckpt is not None:
            sched_state = ckpt.scheduler_state()
            opt_state = None if deepspeed_run else ckpt.optimizer_state()  # DeepSpeed: the ZeRO shard, below
            if sched_state is None or (opt_state is None and not deepspeed_run):
                raise InputError(f"{ckpt.uri}: checkpoint has no optimizer/scheduler state to resume from")
            if opt_state is not None:
                optimizer.load_state_dict(opt_state)
            scheduler.load_state_dict(sched_state)
            start_step = ckpt.state.step

        if cfg.dist.strategy == "deepspeed":
            import deepspeed

            engine, optimizer, _, scheduler = deepspeed.initialize(
                model=model,
                optimizer=optimizer,
                lr_scheduler=scheduler,
                config=_deepspeed_config(cfg, env, bf16),
            )
            model = engine
            if ckpt is not None:
                # fetch_checkpoint refuses a checkpoint without this rank's shard
                assert ckpt.zero_shard is not None
                load_zero_shard(engine, ckpt.zero_shard, env.world)
                engine.global_steps, engine.global_samples = start_step, start_step * global_batch
        elif env.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(
                model, device_ids=[env.device.index] if env.device.type == "cuda" else None
            )
        if ckpt is not None:
            restore_rng_state(ckpt.rng_states(), env.rank)  # last: nothing above draws from it any more
            ckpt.release()

        # created only now: a run that fails to start (dataset, model, config) leaves no empty run directory
        run_dir.mkdir(parents=True, exist_ok=True)
        writer = CheckpointWriter(ckpt_root, run_dir, cfg.checkpoint.keep_last)
        logger = MetricLogger(run_dir, env.main)
        train_scores = Counter(_key(r.score) for r in train_rows)
        published: list[str] = []

        def save_model(dest: Path, state_dict: dict[str, Any] | None = None) -> None:
            net = _unwrap(model)
            net.save_pretrained(dest, **({"state_dict": state_dict} if state_dict is not None else {}))
            processor.save_pretrained(dest)

        def zero_shards(step: int) -> list[Any]:
            """DeepSpeed: each rank uploads its ZeRO optimizer shard into step-<n>/; every rank's manifest entry."""
            if env.main:
                writer.begin(step)
            barrier(env)
            fd, tmp = tempfile.mkstemp(prefix=".zero-", suffix=".safetensors", dir=run_dir)
            os.close(fd)
            try:
                save_zero_shard(engine, Path(tmp))
                entry = writer.upload(step, zero_shard_name(env.rank), Path(tmp))
            finally:
                Path(tmp).unlink(missing_ok=True)
            return gather_uploads(entry, env.world)

        def checkpoint(step: int, epoch: int) -> None:
            rng = gather_rng_states(env.world)
            full_sd = zero3_state_dict(engine, cfg)  # collective under ZeRO-3: every rank takes part
            uploaded = zero_shards(step) if engine is not None else []
            if env.main:
                state = TrainerState(
                    step=step, epoch=epoch, world_size=env.world, global_batch=global_batch,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, run_name=cfg.run_name,
                    finetune=cfg.finetune, seed=cfg.seed, rubrics_sha256=pack.sha256,
                    strategy=cfg.dist.strategy, zero_stage=zero_stage, packing=cfg.batch.packing,
                )  # fmt: skip
                published.append(
                    writer.publish(
                        state,
                        save_model=lambda dest: save_model(dest, full_sd),
                        optimizer_state=None if engine is not None else optimizer.state_dict(),
                        scheduler_state=scheduler.state_dict(),
                        rng_states=rng,
                        uploaded=uploaded,
                    )
                )
            barrier(env)
            if os.environ.get(KILL_AFTER_CHECKPOINT_ENV) == str(step):
                # test hook: a preemption right after step-<n> is published
                os.kill(os.getpid(), signal.SIGKILL)

        def run_eval(step: int) -> dict[str, float]:
            metrics: dict[str, float] = {}
            everyone = engine is not None and cfg.dist.zero_stage == 3  # ZeRO-3 forwards are collective
            if val_rows and (env.main or everyone):
                metrics = evaluate(model, processor, collator, val_rows, cfg, env, train_scores)
                if env.main:
                    logger.log(step, metrics)
            barrier(env)
            return metrics

        if env.main:
            log.info(
                "run %s: %d train / %d val rows (%d bad rows skipped), world %d, global batch %d, %d steps "
                "(%d per epoch), from step %d",
                cfg.run_name, len(train_rows), len(val_rows), len(ds.skipped), env.world, global_batch,
                total_steps, steps_per_epoch, start_step,
            )  # fmt: skip
        final_eval: dict[str, float] = {}
        step = start_step
        epoch = step // steps_per_epoch
        with _progress(env.main, cfg.run_name, total_steps, start_step) as progress:
            while step < total_steps:
                t0 = time.perf_counter()
                if planner is not None:
                    plan = planner.plan(step, env.rank)
                    epoch, micro, step_labels = plan.epoch, plan.micro, plan.step_labels
                else:
                    plan, step_labels = None, None
                    epoch, micro = step_micro_batches(train_rows, cfg, env, step, steps_per_epoch)
                batches = (
                    _checked_batch(collator([train_rows[i] for i in idx]), plan, a, idx, train_rows)
                    for a, idx in enumerate(micro)
                )
                loss_sum, tokens = accumulate_step(
                    model, engine, batches, len(micro), cfg=cfg, env=env, step_labels=step_labels
                )
                grad_norm = float("nan")
                lr = scheduler.get_last_lr()[0]
                if engine is None:
                    if cfg.optim.max_grad_norm:
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                else:
                    gn = engine.get_global_grad_norm()
                    grad_norm = float(gn) if gn is not None else float("nan")
                step += 1
                if planner is not None:  # each micro-batch's loss is already a share of the step's token mean
                    loss_mean = all_mean(loss_sum, env) * env.world
                else:
                    loss_mean = all_mean(loss_sum / len(micro), env)
                dt = time.perf_counter() - t0
                rate = global_batch / dt
                token_rate = all_mean(tokens, env) * env.world / dt  # every rank's non-padding tokens
                if env.main and (step % cfg.log_every == 0 or step == total_steps):
                    extra = {}
                    if planner is not None:
                        extra["train/micro_batches"] = len(micro)  # the same on every rank
                    if env.device.type == "cuda":
                        extra["train/peak_mem_gib"] = torch.cuda.max_memory_allocated(env.device) / 2**30
                    logger.log(
                        step,
                        {"train/loss": loss_mean, "train/lr": lr, "train/grad_norm": grad_norm,
                         "train/samples_per_s": rate, "train/tokens_per_s": token_rate, "train/epoch": epoch,
                         **extra},
                    )  # fmt: skip
                progress.update(completed=step, info=f"loss {loss_mean:.4f} lr {lr:.2e} {rate:.1f} samples/s")
                if cfg.eval.every_n_steps and step % cfg.eval.every_n_steps == 0 and step < total_steps:
                    run_eval(step)
                if (
                    cfg.checkpoint.every_n_steps
                    and step % cfg.checkpoint.every_n_steps == 0
                    and step < total_steps
                ):
                    checkpoint(step, epoch)
        final_eval = run_eval(step)
        if not published or not published[-1].endswith(f"step-{step}"):
            checkpoint(step, epoch)
        export_dir = (
            export_model(model, processor, cfg, run_dir, env, zero3_state_dict(engine, cfg))
            if cfg.export.enabled
            else None
        )
        barrier(env)
        return TrainResult(
            run_dir=run_dir,
            steps=step,
            final_eval=final_eval,
            export_dir=export_dir,
            checkpoints=published,
            resumed_from=resume_uri,
            skipped_rows=len(ds.skipped),
            rubrics=pack.ref,
        )
    finally:
        if ckpt is not None:
            ckpt.release()
        if logger is not None:
            logger.close()
        if engine is not None:
            release_engine(engine)


def release_engine(engine: Any) -> None:
    """Let a finished DeepSpeed engine be freed, and with it the process groups it holds (DeepSpeed 0.19).

    `engine.destroy()` removes the hooks that tie it to autograd (ZeRO-2's gradient hooks are held in C++, where no
    garbage collection sees them). ZeRO-3 keeps the model in two places of its own that nothing empties, and the
    model's hooks hold the engine: `parameter_offload.FWD_MODULE_STACK`, a module-level list the model is appended
    to, and the `functools.lru_cache` of `PartitionedParameterCoordinator.__params_to_release` (a method, so the cache
    holds its arguments: the coordinator and the model's submodules)."""
    from deepspeed.runtime.zero import parameter_offload, partitioned_param_coordinator

    engine.destroy()
    stack = getattr(parameter_offload, "FWD_MODULE_STACK", None)
    if stack is not None:
        stack[:] = [m for m in stack if m is not engine.module]
    coordinator = partitioned_param_coordinator.PartitionedParameterCoordinator
    release = getattr(coordinator, "_PartitionedParameterCoordinator__params_to_release", None)
    for cell in getattr(release, "__closure__", None) or ():  # under DeepSpeed's NVTX wrapper
        if hasattr(cell.cell_contents, "cache_clear"):
            cell.cell_contents.cache_clear()


def zero3_state_dict(engine: Any, cfg: SFTConfig) -> dict[str, Any] | None:
    """Under ZeRO-3 the parameters are partitioned: gather a full state dict (on rank 0; all ranks must call)."""
    if engine is None or cfg.dist.zero_stage != 3:
        return None
    return engine._zero3_consolidated_16bit_state_dict()


def export_model(
    model: Any,
    processor: Any,
    cfg: SFTConfig,
    run_dir: Path,
    env: DistEnv,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write the final `save_pretrained` model (LoRA merged unless `lora.merge_on_export` is false) to
    `<run_dir>/export` (rank 0) and publish it to `export.uri` when set. `state_dict`: the gathered ZeRO-3 weights."""
    dest = run_dir / "export"
    if env.main:
        import shutil

        net = _unwrap(model)
        if cfg.finetune == "lora" and cfg.lora.merge_on_export:
            net = net.merge_and_unload()
        tmp = run_dir / ".export-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        net.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        processor.save_pretrained(tmp)
        from firm.rewards.packs import write_provenance
        from firm.rubric_store import load_pack

        write_provenance(tmp, load_pack(cfg.rubrics))  # which prompts this critic learned to answer
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        if cfg.export.uri:
            from firm.storage import publish_dir

            publish_dir(dest, cfg.export.uri, producer=f"firm.critic.sft {cfg.run_name}")
    return dest


# ----------------------------------------------------------------------------------------------- entrypoint


def parse_args(argv: list[str] | None = None) -> tuple[str, list[str]]:
    p = argparse.ArgumentParser(
        prog="python -m firm.critic.sft", description="Critic SFT (see module docstring)."
    )
    p.add_argument(
        "--config", required=True, help="recipe YAML path or shipped recipe name (critic/tiny_cpu)"
    )
    p.add_argument("--resume", default=None, help="auto | none | checkpoint URI (same as resume=...)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. optim.lr=2e-5")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    return args.config, overrides


def main(argv: list[str] | None = None) -> int:
    """Train; rank 0 prints the `TrainResult` JSON on stdout and nothing else goes there (library output printed
    during the run, e.g. DeepSpeed's logger, is sent to stderr)."""
    from pydantic import ValidationError

    from firm.logs import quiet_libraries

    quiet_libraries()
    out = sys.stdout
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            config, overrides = parse_args(argv)
            cfg = load_sft_config(config, overrides)
            t0 = time.perf_counter()
            result = train(cfg)
    except (FirmError, ValidationError) as exc:
        from firm.logs import print_error

        print_error(exc)  # once for all ranks
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        from firm.progress import print_done

        where = [f"critic {result.export_dir}"] if result.export_dir else []
        where += [f"checkpoints {result.checkpoints[-1]}"] if result.checkpoints else []
        print_done(
            f"critic SFT, {result.steps} steps", time.perf_counter() - t0,
            ", ".join([*where, f"run {result.run_dir}"]),
        )  # fmt: skip
        out.write(result.model_dump_json() + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
