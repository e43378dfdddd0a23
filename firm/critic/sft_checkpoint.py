"""Critic SFT checkpoints in the object store: `<checkpoint root>/step-<n>/`, published atomically.

A checkpoint directory holds::

    model/               save_pretrained: the full model, or the LoRA adapter (+ the processor files)
    optimizer.pt         torch.save of the optimizer state dict (tensors and plain values only)
    scheduler.pt         torch.save of the LR scheduler state dict
    rng.pt               every rank's torch (and CUDA) RNG state, gathered to rank 0 as uint8 tensors
    trainer_state.json   step, epoch, world size, global batch, data position

Everything is written into a local staging directory and published with `firm.storage.publish_dir` (files first,
`MANIFEST.json` last), so a crash never leaves a checkpoint that `latest()` would pick. The `.pt` files are loaded
with `torch.load(weights_only=True)`: no pickled code is ever executed on resume.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from firm.errors import ConfigError, InputError

STEP_RE = re.compile(r"^step-(\d+)/MANIFEST\.json$")


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

    def publish(
        self,
        state: TrainerState,
        *,
        save_model: Any,
        optimizer_state: dict[str, Any] | None,
        scheduler_state: dict[str, Any] | None,
        rng_states: list[torch.Tensor],
    ) -> str:
        """Write and publish `step-<n>`; `save_model(dir)` writes the model/adapter + processor. Returns the URI."""
        from firm.storage import open_store, publish_dir

        if not self._bucket_checked:
            store, _ = open_store(self.root_uri)
            ensure_bucket = getattr(
                store, "ensure_bucket", None
            )  # S3: create the checkpoints bucket if missing
            if ensure_bucket is not None:
                ensure_bucket()
            self._bucket_checked = True
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
            publish_dir(stage, uri, producer=f"firm.critic.sft {state.run_name}")
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

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

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

    local = Path(resolve_local(uri))
    state_file = local / "trainer_state.json"
    if not state_file.is_file():
        raise InputError(f"{uri}: not a critic SFT checkpoint (no trainer_state.json)")
    state = TrainerState.model_validate(json.loads(state_file.read_text()))
    return LoadedCheckpoint(uri=uri, dir=local, state=state)


def check_compatible(
    ckpt: LoadedCheckpoint,
    *,
    world_size: int,
    global_batch: int,
    finetune: str,
    rubrics_sha256: str | None = None,
) -> None:
    """Resuming must keep the data order (same world size, global batch and fine-tuning mode) and the prompts
    (same rubric pack)."""
    s = ckpt.state
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
