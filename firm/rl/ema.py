"""An exponential moving average of the trained LoRA parameters: what checkpoints export and evaluation samples.

After optimizer step k (1-based), every `update_every` steps: ema ← ema + (1 − d_k)·(θ − ema), with
d_k = min(decay, (1 + k)/(10 + k)) when `warmup` (the official trainers' EMA wrapper, decay 0.9), else d_k = decay.
The EMA starts as a copy of the initial parameters and is kept in float32, like the LoRA weights themselves
(`firm.rl.lora`): with decay 0.9 an EMA step moves it by a tenth of an update, far below bf16's spacing.
`applied(params)` swaps it into the parameters for a block (export, sample grids) and restores the trained values
afterwards.

The official wrapper (`EMAModuleWrapper` in the `flow_grpo/ema.py` that FIRM-Reward, DiffusionNFT and Flow-GRPO each
carry) keeps `p.clone()` copies of the trainable parameters, decays with min(decay, (1 + k)/(10 + k)) at
optimization step k, folds when (k + 1) % `update_step_interval` == 0, and swaps the average in (`copy_ema_to`) and
back (`copy_temp_to`) around evaluation and checkpoint saving. The NFT trainers call `step` once after each optimizer
step with k counted from 1 (interval 1: every step, as here). Where FIRM differs: Flow-GRPO's `train_sd3.py` calls
`step(…, global_step)` after every training micro-batch, so with interval 8 it folds at each micro-batch while
global_step is 7, 15, …; FIRM folds once, after optimizer steps 8, 16, … (one fold per optimizer step, the count the
decay schedule is written in).

This is not DiffusionNFT's "old" policy (`firm.rl.lora.ema_update`), which is a second adapter with its own ramped
decay that collects rollouts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


class ParamEMA:
    def __init__(
        self, params: Sequence[torch.Tensor], decay: float, *, warmup: bool = True, update_every: int = 1
    ) -> None:
        self.decay, self.warmup, self.update_every = decay, warmup, update_every
        self.shadow = [p.detach().clone().float() for p in params]

    def decay_at(self, k: int) -> float:
        """The decay used at optimizer step k (1-based)."""
        return min(self.decay, (1 + k) / (10 + k)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, params: Sequence[torch.Tensor], k: int) -> bool:
        """Fold the parameters after optimizer step k into the average; False when this step is skipped."""
        if k % self.update_every:
            return False
        w = 1.0 - self.decay_at(k)
        for s, p in zip(self.shadow, params, strict=True):
            s.add_(p.detach().to(s.dtype) - s, alpha=w)
        return True

    @contextmanager
    def applied(self, params: Sequence[torch.Tensor]) -> Iterator[None]:
        """Inside the block the parameters hold the EMA; the trained values come back afterwards."""
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, s in zip(params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)

    def state(self) -> list[torch.Tensor]:
        return [s.detach().cpu().clone() for s in self.shadow]

    @torch.no_grad()
    def load(self, tensors: Sequence[torch.Tensor]) -> None:
        if len(tensors) != len(self.shadow):
            raise ValueError(f"EMA state has {len(tensors)} tensors, the LoRA {len(self.shadow)}")
        for s, t in zip(self.shadow, tensors, strict=True):
            s.copy_(t.to(s.device, s.dtype))
