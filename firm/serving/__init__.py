"""FIRM serving: export critics as Triton model repositories, run tritonserver, and score through `RewardClient`.

- `firm.serving.export`: `ExportConfig`, `export_repository` (local dir or s3:// / file://, atomically).
- `firm.serving.server`: `TritonServer` (the bundled tritonserver binary with the python backend).
- `firm.serving.client`: `RewardClient` (sync + async, batching, least-loaded routing, failover, retries).
- `firm.serving.backend`: the python-backend model code that runs inside Triton.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExportConfig", "RewardClient", "RewardServiceError", "TritonServer", "export_repository"]

_LAZY = {
    "RewardClient": "firm.serving.client",
    "RewardServiceError": "firm.serving.client",
    "TritonServer": "firm.serving.server",
    "ExportConfig": "firm.serving.export",
    "export_repository": "firm.serving.export",
}


def __getattr__(name: str) -> Any:  # lazy: importing firm.serving must not pull in grpc
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
