"""RL checkpoints: the LoRA in diffusers format plus everything needed to resume exactly.

Layout of `<output_uri>/checkpoints/step-<N>/` (published atomically with firm.storage.publish_dir, MANIFEST last):
  pytorch_lora_weights.safetensors   the exported LoRA — the parameter EMA (`ema.enabled`, else the trained adapter) —
                                     loadable with `pipe.load_lora_weights(dir)`
  trainable_lora.safetensors         the trained adapter itself (resume)
  old_lora.safetensors               NFT's old-policy ("old") adapter
  trainer_state.pt                   optimizer state, RNG states, step, optimizer steps (torch.load(weights_only=True))
  state.json                         step, algorithm, config
  metrics.jsonl                      the run's metrics up to this step (pods' local disks do not survive)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from firm.errors import ConfigError, StorageError

LORA_FILE = "pytorch_lora_weights.safetensors"
TRAINABLE_FILE = "trainable_lora.safetensors"
OLD_FILE = "old_lora.safetensors"
STATE_FILE = "trainer_state.pt"


def checkpoints_prefix(output_uri: str) -> str:
    return output_uri.rstrip("/") + "/checkpoints"


def step_uri(output_uri: str, step: int) -> str:
    return f"{checkpoints_prefix(output_uri)}/step-{step:08d}"


@dataclass
class Loaded:
    step: int
    lora: dict[str, torch.Tensor]  # the exported LoRA (the EMA when the run keeps one)
    trainable: dict[str, torch.Tensor]
    old_lora: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]
    uri: str


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(
    policy: Any,
    output_uri: str,
    step: int,
    lora: dict[str, torch.Tensor],
    trainable: dict[str, torch.Tensor],
    old_lora: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    extra_files: list[Path] | None = None,
) -> str:
    """Write and publish the checkpoint of `step` (plus `extra_files`, e.g. the metrics so far); returns its URI.
    `lora` is what the checkpoint exports, `trainable` the trained adapter; `meta["optimizer_steps"]` (if given) goes
    into the trainer state too."""
    from firm.storage import publish_dir

    uri = step_uri(output_uri, step)
    with tempfile.TemporaryDirectory(prefix="firm-rl-ckpt-") as tmp:
        d = Path(tmp)
        policy.save_lora(d, lora)
        save_file(trainable, str(d / TRAINABLE_FILE))
        save_file(old_lora, str(d / OLD_FILE))
        state = {"optimizer": optimizer.state_dict(), "rng": rng_state(), "step": step}
        if "optimizer_steps" in meta:
            state["optimizer_steps"] = int(meta["optimizer_steps"])
        torch.save(state, d / STATE_FILE)
        (d / "state.json").write_text(json.dumps({"step": step, **meta}, indent=2, default=str))
        for f in extra_files or []:
            if f.exists():
                shutil.copyfile(f, d / f.name)
        publish_dir(d, uri, producer="firm.rl")
    return uri


def find_resume(resume: str, output_uri: str) -> str | None:
    """The checkpoint URI to resume from: 'auto' → latest under output_uri (None if there is none), 'none' → None."""
    if resume == "none":
        return None
    if resume == "auto":
        from firm.storage import latest

        return latest(checkpoints_prefix(output_uri))
    return resume


def check_fresh_output(resume: str, output_uri: str) -> None:
    """A fresh run (resume 'none') must not write into an output_uri that already holds a run's checkpoints: it
    would restart at step 0 and overwrite some of them while later, stale ones stay behind."""
    if resume != "none":
        return
    from firm.errors import MissingBucketError
    from firm.storage import latest

    try:
        found = latest(checkpoints_prefix(output_uri))
    except MissingBucketError:  # nothing was ever written there
        return
    if found is not None:
        from firm.storage.targets import exists_message

        raise ConfigError(exists_message("output_uri", output_uri, resume="--resume auto"))


def load_checkpoint(uri: str) -> Loaded:
    from firm.storage import resolve_local

    d = resolve_local(uri)
    for f in (LORA_FILE, OLD_FILE, STATE_FILE):
        if not (d / f).exists():
            raise StorageError(f"{uri}: checkpoint is missing {f}")
    state = torch.load(d / STATE_FILE, weights_only=True, map_location="cpu")
    lora = _transformer_keys(load_file(str(d / LORA_FILE)))
    # checkpoints written before the parameter EMA exported the trained adapter itself
    trainable = load_file(str(d / TRAINABLE_FILE)) if (d / TRAINABLE_FILE).exists() else lora
    return Loaded(int(state["step"]), lora, trainable, load_file(str(d / OLD_FILE)), state, uri)


def _transformer_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers prefixes LoRA keys with 'transformer.'; peft's state dict has none."""
    return {k.removeprefix("transformer."): v for k, v in state.items()}


def export_final(policy: Any, output_uri: str, lora: dict[str, torch.Tensor], merged: bool) -> dict[str, str]:
    """Publish the final LoRA (and optionally a merged pipeline) under `<output_uri>/final/`."""
    from firm.storage import publish_dir

    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="firm-rl-final-") as tmp:
        d = Path(tmp) / "lora"
        d.mkdir()
        policy.save_lora(d, lora)
        out["lora"] = output_uri.rstrip("/") + "/final/lora"
        publish_dir(d, out["lora"], producer="firm.rl")
        if merged:
            m = Path(tmp) / "merged"
            policy.save_merged(m, lora)
            out["merged"] = output_uri.rstrip("/") + "/final/merged"
            publish_dir(m, out["merged"], producer="firm.rl")
            shutil.rmtree(m, ignore_errors=True)
    return out
