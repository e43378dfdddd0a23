"""Pretrained policy files: resolve a location (HF id, local directory, file:// or s3:// URI) and read the parts of a
diffusers directory the adapters need. The low module of `firm.rl.policies`: `base` and every adapter import it;
`firm.rl.policies.loading` (which picks the adapter) sits above them all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firm.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from firm.rl.config import PolicyConfig


def torch_dtype(name: str) -> torch.dtype:
    """A policy's `dtype` setting (`float32`, `bfloat16`, `float16`) as a torch dtype. torch is imported here, not
    with the module: the launcher's checks (`firm.rl.train.preflight`) resolve a policy location without it."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_pretrained(uri: str, what: str = "policy.uri") -> str:
    """A local directory for file:// and s3:// URIs (fetched and verified via firm.storage), else the path or HF id.
    `what` names the setting or option the URI came from in errors (e.g. `--lora`)."""
    if uri.startswith(("s3://", "file://")):
        from firm.storage import resolve_local

        return str(resolve_local(uri))
    from firm.errors import InputError
    from firm.storage.model_ref import check_model_ref

    p = Path(uri).expanduser()
    if p.exists():
        return str(p)
    try:
        return check_model_ref(uri, what)  # a Hugging Face id (org/name); a missing local path fails here
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def absent_components(path: str) -> dict[str, Any]:
    """Components saved as null in model_index.json (e.g. SD3 without T5) must be passed as None explicitly."""
    index = Path(path) / "model_index.json"
    if not index.exists():
        return {}
    data = json.loads(index.read_text())
    return {k: None for k, v in data.items() if isinstance(v, list) and v[:1] == [None]}


def ready_pipeline(pipe: Any, cfg: PolicyConfig, device: torch.device) -> Any:
    """A loaded pipeline made ready for RL: on `device`, progress bars off, activation checkpointing in the
    transformer when `policy.gradient_checkpointing`."""
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if cfg.gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    return pipe
