"""Load a policy: pick the adapter class of its family (`firm.rl.policies.registry`) and let it load the pipeline.
Locations are resolved by `firm.rl.policies.pretrained`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from firm.rl.policies.pretrained import resolve_pretrained

if TYPE_CHECKING:
    from firm.rl.config import PolicyConfig
    from firm.rl.policies.base import DiffusionPolicy


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
