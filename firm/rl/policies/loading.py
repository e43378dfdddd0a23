"""Resolve a policy location (HF id, local directory, file:// or s3:// URI) and pick the adapter class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from firm.errors import ConfigError

if TYPE_CHECKING:
    from firm.rl.config import PolicyConfig
    from firm.rl.policies.base import DiffusionPolicy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_pretrained(uri: str, what: str = "policy.uri") -> str:
    """A local directory for file:// and s3:// URIs (fetched and verified via firm.storage), else the path or HF id.
    `what` names the setting or option the URI came from in errors (e.g. `--lora`)."""
    if uri.startswith(("s3://", "file://")):
        from firm.storage import resolve_local

        return str(resolve_local(uri))
    p = Path(uri).expanduser()
    if p.exists():
        return str(p)
    if uri.startswith(("/", "./", "../")):
        raise ConfigError(f"{what}={uri}: local directory does not exist")
    return uri  # a Hugging Face id


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


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def load_policy(cfg: PolicyConfig, device: torch.device) -> DiffusionPolicy:
    """Load the policy named by `cfg` onto `device`, frozen, in eval mode (the LoRA is added by firm.rl.lora)."""
    import diffusers  # noqa: F401  (lazy module: cheap) so that its loading bars can be quieted

    from firm.logs import quiet_loaded

    quiet_loaded()
    from firm.rl.policies.registry import adapter_class, check_directory_family

    adapter = adapter_class(cfg.kind)
    if cfg.uri.startswith(("s3://", "file://")) or Path(cfg.uri).expanduser().exists():
        check_directory_family(cfg.kind, resolve_pretrained(cfg.uri))
    return adapter.from_pretrained(cfg, device)
