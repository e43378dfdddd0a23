"""Run monitoring: JSONL + TensorBoard scalars, reward-hacking statistics and eval sample grids.

Reward-hacking monitors (the paper's failure modes): for editing, the mean similarity between the source and the
edited image (an editor collapsing to identity copies drives it to 1 — flagged when it stays above a threshold and
keeps rising); for generation, image detail statistics (mean gradient magnitude and intensity entropy fall when a
model learns low-detail silhouettes).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from firm.storage.base import atomic_path

log = logging.getLogger(__name__)


def source_similarity(edited: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Per-image similarity in [0, 1]: 1 − mean |edited − source| (both [B, 3, H, W] in [0, 1])."""
    return 1.0 - (edited.float() - source.float()).abs().mean(dim=(1, 2, 3))


def detail(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute spatial gradient of the luminance (high-frequency detail)."""
    lum = images.float().mean(dim=1)
    gx = (lum[:, :, 1:] - lum[:, :, :-1]).abs().mean(dim=(1, 2))
    gy = (lum[:, 1:, :] - lum[:, :-1, :]).abs().mean(dim=(1, 2))
    return gx + gy


def entropy(images: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """Per-image Shannon entropy (bits) of the luminance histogram."""
    out = []
    for lum in images.float().mean(dim=1):
        h = torch.histc(lum, bins=bins, min=0.0, max=1.0)
        p = h / h.sum().clamp(min=1)
        out.append(-(p[p > 0] * p[p > 0].log2()).sum())
    return torch.stack(out)


class IdentityCopyFlag:
    """Flags an editing run whose source similarity is above `threshold` and rose over the last `window` steps."""

    def __init__(self, threshold: float = 0.97, window: int = 10) -> None:
        self.threshold, self.window = threshold, window
        self.history: list[float] = []

    def update(self, similarity: float) -> bool:
        self.history = [*self.history, similarity][-self.window :]
        if len(self.history) < self.window:
            return False
        return self.history[-1] > self.threshold and self.history[-1] > self.history[0]


class MetricLogger:
    """Writes one JSON object per step to `metrics.jsonl` (and TensorBoard scalars when enabled). Rank 0 only."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer: Any = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume: forget metrics of steps after the checkpoint, so the log has each step once."""
        if not self.enabled or not self.path.exists():
            return
        keep = [
            ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
        ]
        self.path.write_text("".join(k + "\n" for k in keep))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"step": step, **{k: v for k, v in metrics.items() if v is not None}}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in rec.items():
                if (
                    isinstance(v, int | float)
                    and not isinstance(v, bool)
                    and math.isfinite(v)
                    and k != "step"
                ):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def image_grid(self, step: int, images: torch.Tensor, out: Path) -> None:
        """Save a PNG grid of eval samples (and add it to TensorBoard)."""
        if not self.enabled:
            return
        from firm.rl.rewards import to_pil

        n = images.shape[0]
        cols = min(n, 4)
        rows = -(-n // cols)
        _, c, h, w = images.shape
        grid = torch.ones(c, rows * h, cols * w)
        for i in range(n):
            r, k = divmod(i, cols)
            grid[:, r * h : (r + 1) * h, k * w : (k + 1) * w] = images[i]
        with atomic_path(out) as tmp:
            to_pil(grid).save(tmp, format="PNG")
        if self.writer is not None:
            self.writer.add_image("eval/samples", grid, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
