"""Critic SFT checkpoints in the object store: `<checkpoint root>/step-<n>/`, published atomically.

A checkpoint directory holds::

    model/               save_pretrained: the full model, or the LoRA adapter (+ the processor files)
    optimizer.pt         DDP: torch.save of the optimizer state dict (tensors and plain values only)
    scheduler.pt         torch.save of the LR scheduler state dict
    rng.pt               every rank's torch (and CUDA) RNG state, gathered to rank 0 as uint8 tensors
    zero/rank-NNNNN.safetensors   DeepSpeed: each rank's ZeRO optimizer partition (`firm.critic.state_codec`)
    trainer_state.json   step, epoch, world size, global batch, data position, packing, strategy and ZeRO stage

Everything rank 0 writes is staged in a local directory; under DeepSpeed every rank uploads its own ZeRO shard
straight into `step-<n>/zero/` and reports its size and sha256 to rank 0 (as tensors, not pickled objects). Rank 0
then publishes with `firm.storage.publish_dir` (files first, `MANIFEST.json` last, listing the shards too), so a
crash never leaves a checkpoint that `latest()` would pick.

Trust boundary: a checkpoint is read only through the `MANIFEST.json` the run published, and every file used is
checked against the manifest's size and sha256 before it is opened (`resolve_local` for DDP, `fetch_checkpoint`
for DeepSpeed, which downloads the shared files and only this rank's shard). Bytes that pass that check are still
parsed without ever unpickling: `.pt` files with `torch.load(weights_only=True)` (tensors and plain containers
only), ZeRO shards as safetensors plus a JSON tree decoded by an explicit codec that builds nothing but
dict/list/tuple/str/int/float/bool/None/tensor, the model with safetensors. DeepSpeed's own `save_checkpoint` /
`load_checkpoint` are never used (its loader unpickles: `torch.load` with `weights_only` off). What is dropped from
DeepSpeed's optimizer `state_dict()` and why: `loss_scaler` (an object; FIRM trains in bf16/fp32, whose loss scale
is static — the running engine's own scaler is put back on load; fp16 dynamic loss scaling is refused) and
`param_slice_mappings` (derived from the model layout, used only by universal checkpoints).
Resuming restores the model from `model/`, each rank's ZeRO partition (fp32 master weights and Adam moments,
`load_from_fp32_weights=True`) from its shard, and FIRM's scheduler and RNG states exactly as the DDP path does;
the world size and ZeRO stage must be those the checkpoint was written with.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel

if TYPE_CHECKING:
    from firm.storage import ManifestFile

from firm.errors import ConfigError, InputError

STEP_RE = re.compile(r"^step-(\d+)/MANIFEST\.json$")
ZERO_DIR = "zero"
# Entries of a DeepSpeed ZeRO optimizer state_dict() that are not saved (see the module docstring).
_ZERO_DROPPED = ("loss_scaler", "param_slice_mappings")


class TrainerState(BaseModel):
    """Where a run is: enough to continue with exactly the data an uninterrupted run would see."""

    step: int
    epoch: int
    world_size: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    run_name: str
    finetune: str
    seed: int
    rubrics_sha256: str | None = None  # the rubric pack trained on (None: written before packs existed)
    strategy: str = "ddp"  # dist.strategy: ddp | deepspeed (checkpoints written before DeepSpeed resume: ddp)
    zero_stage: int | None = None  # DeepSpeed ZeRO stage of the shards under zero/
    packing: str = "none"  # batch.packing: which rows each step takes (older checkpoints: none)


def step_uri(root: str, step: int) -> str:
    from firm.storage import join_uri

    return join_uri(root, f"step-{step}")


def gather_rng_states(world: int) -> list[torch.Tensor]:
    """Each rank's CPU (and CUDA) RNG state as uint8 tensors, gathered on every rank (no pickling)."""
    import torch.distributed as dist

    state = torch.get_rng_state()
    if torch.cuda.is_available():
        state = torch.cat([state, torch.cuda.get_rng_state()])
    if world == 1 or not dist.is_initialized():
        return [state]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    local = state.to(device) if device is not None else state
    out = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def restore_rng_state(states: list[torch.Tensor], rank: int) -> None:
    state = states[rank]
    cpu_len = torch.get_rng_state().numel()
    torch.set_rng_state(state[:cpu_len].clone())
    if torch.cuda.is_available() and state.numel() > cpu_len:
        torch.cuda.set_rng_state(state[cpu_len:].clone())


class CheckpointWriter:
    """Stages a checkpoint locally (rank 0) and publishes it; prunes to the newest `keep_last`."""

    def __init__(self, root_uri: str, run_dir: Path, keep_last: int):
        self.root_uri = root_uri.rstrip("/")
        self.run_dir = run_dir
        self.keep_last = keep_last
        self._bucket_checked = False

    def _ensure_bucket(self) -> None:
        from firm.storage import open_store

        if not self._bucket_checked:
            store, _ = open_store(self.root_uri)
            ensure_bucket = getattr(
                store, "ensure_bucket", None
            )  # S3: create the checkpoints bucket if missing
            if ensure_bucket is not None:
                ensure_bucket()
            self._bucket_checked = True

    def begin(self, step: int) -> None:
        """Rank 0, before other ranks upload into `step-<n>/`: the bucket exists and no old manifest of that step
        stays visible while its files are replaced."""
        from firm.storage import MANIFEST_NAME, open_store

        self._ensure_bucket()
        store, key = open_store(step_uri(self.root_uri, step))
        mkey = key.rstrip("/") + "/" + MANIFEST_NAME
        if store.exists(mkey):
            store.delete([mkey])

    def upload(self, step: int, rel: str, local: Path) -> ManifestFile:
        """Upload one file into `step-<n>/<rel>` (any rank); its manifest entry, for rank 0's `publish`."""
        from firm.storage import ManifestFile, open_store, sha256_file

        entry = ManifestFile(path=rel, size=local.stat().st_size, sha256=sha256_file(local))
        store, key = open_store(step_uri(self.root_uri, step))
        store.put_file(key.rstrip("/") + "/" + rel, local)
        return entry

    def publish(
        self,
        state: TrainerState,
        *,
        save_model: Any,
        optimizer_state: dict[str, Any] | None,
        scheduler_state: dict[str, Any] | None,
        rng_states: list[torch.Tensor],
        uploaded: Sequence[ManifestFile] = (),
    ) -> str:
        """Write and publish `step-<n>`; `save_model(dir)` writes the model/adapter + processor; `uploaded`: files
        the ranks already put there (ZeRO shards), listed in the manifest. Returns the URI."""
        from firm.storage import publish_dir

        self._ensure_bucket()
        stage = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=self.run_dir))
        try:
            save_model(stage / "model")
            if optimizer_state is not None:
                torch.save(optimizer_state, stage / "optimizer.pt")
            if scheduler_state is not None:
                torch.save(scheduler_state, stage / "scheduler.pt")
            torch.save({"rank_states": rng_states}, stage / "rng.pt")
            (stage / "trainer_state.json").write_text(state.model_dump_json(indent=2))
            uri = step_uri(self.root_uri, state.step)
            publish_dir(stage, uri, producer=f"firm.critic.sft {state.run_name}", uploaded=uploaded)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        self.prune()
        return uri

    def published_steps(self) -> list[int]:
        from firm.storage import open_store

        store, key = open_store(self.root_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        steps = []
        for obj in store.list(prefix):
            m = STEP_RE.match(obj.key[len(prefix) :])
            if m:
                steps.append(int(m.group(1)))
        return sorted(steps)

    def prune(self) -> None:
        from firm.storage import open_store

        steps = self.published_steps()
        store, key = open_store(self.root_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        for step in steps[: max(0, len(steps) - self.keep_last)]:
            store.delete_prefix(f"{prefix}step-{step}/")


class LoadedCheckpoint(BaseModel):
    """A fetched checkpoint: its URI, local directory and trainer state."""

    uri: str
    dir: Path
    state: TrainerState
    zero_shard: Path | None = None  # DeepSpeed: this rank's ZeRO optimizer shard
    temporary: bool = False  # `dir` is this process's own copy: `release()` removes it

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    def release(self) -> None:
        """Drop a temporary local copy once its contents are loaded."""
        if self.temporary:
            shutil.rmtree(self.dir, ignore_errors=True)

    def optimizer_state(self) -> dict[str, Any] | None:
        p = self.dir / "optimizer.pt"
        return torch.load(p, weights_only=True, map_location="cpu") if p.is_file() else None

    def scheduler_state(self) -> dict[str, Any] | None:
        p = self.dir / "scheduler.pt"
        return torch.load(p, weights_only=True, map_location="cpu") if p.is_file() else None

    def rng_states(self) -> list[torch.Tensor]:
        return torch.load(self.dir / "rng.pt", weights_only=True, map_location="cpu")["rank_states"]


def find_checkpoint(resume: str, root_uri: str) -> str | None:
    """The checkpoint to resume from: `auto` → newest complete one under `root_uri` (None if there is none),
    anything else is taken as a checkpoint URI."""
    from firm.storage import latest

    if resume == "none":
        return None
    if resume == "auto":
        return latest(root_uri)
    return resume


def load_checkpoint(uri: str) -> LoadedCheckpoint:
    """Fetch (and verify) a published checkpoint and read its trainer state."""
    from firm.storage import resolve_local

    return load_checkpoint_dir(uri, Path(resolve_local(uri)))


def fetch_checkpoint(uri: str, rank: int) -> LoadedCheckpoint:
    """DeepSpeed: fetch the checkpoint's shared files and this rank's ZeRO shard (not the other ranks' shards) into
    a private temporary directory, every file verified against the published manifest's size and sha256."""
    from firm.config import get_settings
    from firm.storage import fetch_dir

    mine = zero_shard_name(rank)
    parent = get_settings().home / "tmp"
    parent.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=f"resume-rank{rank}-", dir=parent))
    try:
        manifest = fetch_dir(
            uri, dest / "ckpt", select=lambda p: not p.startswith(ZERO_DIR + "/") or p == mine
        )
        if mine not in {f.path for f in manifest.files}:
            raise InputError(f"{uri}: no ZeRO optimizer shard {mine} for rank {rank} (not a DeepSpeed checkpoint of "
                             "this world size)")  # fmt: skip
        ckpt = load_checkpoint_dir(uri, dest / "ckpt")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return LoadedCheckpoint(uri=uri, dir=dest / "ckpt", state=ckpt.state, zero_shard=dest / "ckpt" / mine,
                            temporary=True)  # fmt: skip


def load_checkpoint_dir(uri: str, local: Path) -> LoadedCheckpoint:
    state_file = local / "trainer_state.json"
    if not state_file.is_file():
        raise InputError(f"{uri}: not a critic SFT checkpoint (no trainer_state.json)")
    state = TrainerState.model_validate(json.loads(state_file.read_text()))
    return LoadedCheckpoint(uri=uri, dir=local, state=state)


# ----------------------------------------------------------------------------------------------- DeepSpeed ZeRO


def zero_shard_name(rank: int) -> str:
    return f"{ZERO_DIR}/rank-{rank:05d}.safetensors"


def zero_optimizer_state(engine: Any) -> dict[str, Any]:
    """This rank's ZeRO optimizer state_dict() without the entries FIRM does not save (module docstring)."""
    sd = engine.optimizer.state_dict()
    if sd.get("dynamic_loss_scale"):
        raise ConfigError(
            "DeepSpeed checkpoints with fp16 dynamic loss scaling are not supported; train in bf16 or fp32"
        )
    out = {k: v for k, v in sd.items() if k not in _ZERO_DROPPED}
    if "zero_stage" in out:
        out["zero_stage"] = int(out["zero_stage"])  # an IntEnum: the codec takes plain ints only
    return out


def save_zero_shard(engine: Any, path: Path) -> None:
    """Write this rank's ZeRO optimizer partition pickle-free (`firm.critic.state_codec`)."""
    from firm.critic.state_codec import save_state

    save_state(zero_optimizer_state(engine), path)


def load_zero_shard(engine: Any, path: Path, world: int) -> None:
    """Restore this rank's ZeRO partition (fp32 master weights, Adam moments, param groups incl. the LR) into an
    engine built on the same model, world size and ZeRO stage."""
    from firm.critic.state_codec import StateCodecError, load_state

    state = load_state(path)
    if not isinstance(state, dict):
        raise StateCodecError(f"{path}: not a ZeRO optimizer state")
    state["loss_scaler"] = engine.optimizer.loss_scaler  # static in bf16/fp32: the running engine's own
    # ZeRO-2 reads element [dp rank] (non-elastic) and, with load_from_fp32_weights, copies the saved fp32 partition
    # into its master weights; ZeRO-3's rigid load always restores the fp32 partitions and refreshes the 16-bit ones.
    engine.optimizer.load_state_dict([state] * world, load_optimizer_states=True, load_from_fp32_weights=True)


def gather_uploads(entry: ManifestFile, world: int) -> list[ManifestFile]:
    """Every rank's uploaded shard entry (size + sha256 as int64 tensors: nothing pickled on the wire)."""
    import torch.distributed as dist

    from firm.storage import ManifestFile

    local = torch.tensor([entry.size, *bytes.fromhex(entry.sha256)], dtype=torch.int64)
    if world == 1 or not dist.is_initialized():
        rows = [local]
    else:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = local.to(device) if device is not None else local
        out = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(out, t)
        rows = [o.cpu() for o in out]
    return [
        ManifestFile(path=zero_shard_name(r), size=int(row[0]), sha256=bytes(row[1:].tolist()).hex())
        for r, row in enumerate(rows)
    ]


def check_compatible(
    ckpt: LoadedCheckpoint,
    *,
    world_size: int,
    global_batch: int,
    finetune: str,
    rubrics_sha256: str | None = None,
    strategy: str = "ddp",
    zero_stage: int | None = None,
    packing: str = "none",
) -> None:
    """Resuming must keep the data order (same world size, global batch, packing mode and fine-tuning mode), the
    prompts (same rubric pack) and the optimizer layout (same strategy; same ZeRO stage under DeepSpeed). The token
    budget may change: it regroups a step's rows into micro-batches without changing the rows or the update."""
    s = ckpt.state
    if s.packing != packing:
        raise ConfigError(
            f"cannot resume from {ckpt.uri}: it was trained with batch.packing={s.packing}, this run uses "
            f"batch.packing={packing} (the rows of each step would differ; resume with the same batch.packing)"
        )
    if s.strategy != strategy or (strategy == "deepspeed" and s.zero_stage != zero_stage):
        have = s.strategy + (f" ZeRO-{s.zero_stage}" if s.strategy == "deepspeed" else "")
        want = strategy + (f" ZeRO-{zero_stage}" if strategy == "deepspeed" else "")
        raise ConfigError(
            f"cannot resume from {ckpt.uri}: it was trained with dist.strategy={have}, this run uses {want} (the "
            "optimizer state is laid out differently; resume with the same dist settings or start a new run)"
        )
    if rubrics_sha256 and s.rubrics_sha256 and s.rubrics_sha256 != rubrics_sha256:
        raise ConfigError(
            f"cannot resume from {ckpt.uri}: it was trained with rubric pack sha256 {s.rubrics_sha256[:12]}, this "
            f"run uses {rubrics_sha256[:12]} (the prompts would change mid-run; use the same rubrics= or a new run)"
        )
    if s.world_size != world_size or s.global_batch != global_batch:
        raise ConfigError(
            f"cannot resume from {ckpt.uri}: it was trained with world size {s.world_size} and global batch "
            f"{s.global_batch}, this run has {world_size} and {global_batch} (the data order would differ)"
        )
    if s.finetune != finetune:
        raise ConfigError(
            f"cannot resume from {ckpt.uri}: it is a {s.finetune} checkpoint, this run is {finetune}"
        )
