"""The gradient passes of one RL step on one rank, for DiffusionNFT and Flow-GRPO.

Every group is trained as one micro-batch of its K samples per trained timestep (a sample that is not trained on
gets weight 0). Per-sample weights make the step's gradient one mean over all trained (sample, timestep) pairs of an
update on all ranks: w = 1 / (trained samples of the update, all ranks) / (timesteps per sample).

The no-grad predictions of a micro-batch do not depend on the rewards — NFT's old-policy and reference velocities,
GRPO's reference step means — so `precompute_next` computes them one at a time while rewards are still being scored;
the gradient pass later uses them. The same batch and inputs are used either way, so the result does not depend on
how much was computed ahead. All randomness comes from generators keyed by (seed, step, slot), which makes a step's
gradient independent of the number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from firm.rl import lora as lora_mod
from firm.rl.advantages import optimality_probability
from firm.rl.config import RLConfig
from firm.rl.losses import grpo_loss, nft_loss
from firm.rl.policies.base import Conditioning, DiffusionPolicy
from firm.rl.sampling import VelocityFn, guided, sde_step, sigma_max_of, train_timesteps

GenFn = Callable[..., torch.Generator]


@dataclass
class Batch:
    """What a group's micro-batches need: its latents, conditioning and (GRPO) trajectory."""

    slot: int
    cond: Conditioning
    uncond: Conditioning | None
    final: torch.Tensor  # [K, ...] clean latents
    states: torch.Tensor | None = None  # GRPO: [K, T+1, ...]
    log_probs: torch.Tensor | None = None  # GRPO: [K, T]
    cache: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)


class StepUpdate:
    def __init__(
        self, cfg: RLConfig, policy: DiffusionPolicy, step: int, sigmas: torch.Tensor, gen: GenFn
    ) -> None:
        self.cfg, self.policy, self.step, self.sigmas, self.gen = cfg, policy, step, sigmas, gen
        self.nft = cfg.algorithm == "nft"
        self.batches: list[Batch] = []
        self._plans: dict[tuple[int, int], torch.Tensor] = {}
        self._ahead: Iterator[None] | None = None

    # ------------------------------------------------------------------ timesteps and inputs
    def timesteps(self, b: Batch, epoch: int = 0) -> torch.Tensor:
        """[K, n] timestep indices of a group, in training order."""
        key = (b.slot, epoch)
        if key not in self._plans:
            c, k = self.cfg, b.final.shape[0]
            if self.nft:
                frac, draw = c.nft.timestep_fraction, c.nft.timestep_draw
            else:
                frac, draw = c.grpo.timestep_fraction, c.grpo.timestep_draw
            g = (
                self.gen(c.seed, self.step, b.slot, 3)
                if draw == "per_sample"
                else self.gen(c.seed, self.step, 3, epoch)
            )
            self._plans[key] = train_timesteps(c.sampling.num_steps, frac, draw, k, g)
        return self._plans[key]

    def _velocity(self, b: Batch) -> VelocityFn:
        """The velocity the update predicts with: NFT's is CFG-free; GRPO's has the training's guidance, whose
        unconditional branch carries no gradient (Flow-GRPO's `compute_log_prob` detaches it)."""
        scale = 1.0 if self.nft else self.cfg.grpo.guidance_scale
        if scale == 1.0 or b.uncond is None:
            return self.policy.velocity
        return guided(self.policy.velocity, b.uncond, scale, detach_uncond=True)

    def _nft_inputs(self, b: Batch, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, sigma [K], eps) of NFT micro-batch j: the forward process at each sample's j-th timestep, all float32
        whatever the policy's dtype (the official trainers: `t = timesteps / 1000`, `noise = randn_like(x0.float())`,
        `xt = (1 − t)·x0 + t·noise`), so x_t and σ reach the model unrounded and equal what the loss recomputes."""
        x0 = b.final.float()
        s = self.sigmas[self.timesteps(b)[:, j]].float()
        eps = torch.randn(x0.shape, generator=self.gen(self.cfg.seed, self.step, b.slot, 4, j)).to(x0.device)
        sb = s.to(x0.device).reshape(-1, *([1] * (x0.ndim - 1)))
        return (1 - sb) * x0 + sb * eps, s, eps

    # ------------------------------------------------------------------ no-grad predictions
    @torch.no_grad()
    def _nograd(self, b: Batch, j: int, epoch: int = 0) -> None:
        """Fill the cache with micro-batch j's predictions that need no gradient."""
        t = self.policy.transformer
        if self.nft:
            if ("old", j) in b.cache:
                return
            xt, s, _ = self._nft_inputs(b, j)
            with lora_mod.using(t, lora_mod.OLD):
                b.cache[("old", j)] = self.policy.velocity(xt, s, b.cond)
            if self.cfg.nft.kl_coef > 0:
                with lora_mod.using(t, None):
                    b.cache[("ref", j)] = self.policy.velocity(xt, s, b.cond)
            return
        tj = int(self.timesteps(b, epoch)[0, j])
        if self.cfg.grpo.kl_coef <= 0 or ("ref", tj) in b.cache:
            return
        assert b.states is not None
        x, s_val, s_next = b.states[:, tj], float(self.sigmas[tj]), float(self.sigmas[tj + 1])
        sv = torch.full((x.shape[0],), s_val)
        with lora_mod.using(t, None):
            v_ref = self._velocity(b)(x.to(self.policy.dtype), sv, b.cond)
        b.cache[("ref", tj)] = sde_step(
            v_ref,
            x,
            s_val,
            s_next,
            noise_level=self.cfg.grpo.noise_level,
            sigma_max=sigma_max_of(self.sigmas),
            next_state=b.states[:, tj + 1],
        ).mean

    def _pending(self) -> Iterator[None]:
        for b in self.batches:
            for j in range(self.timesteps(b).shape[1]):
                self._nograd(b, j)
                yield

    def precompute_next(self) -> bool:
        """Compute one pending no-grad prediction (while rewards are scored); False when nothing is left."""
        if self._ahead is None:
            self._ahead = self._pending()
        return next(self._ahead, "done") is None

    # ------------------------------------------------------------------ gradient passes
    def backward(
        self, b: Batch, advantages: torch.Tensor, weights: torch.Tensor, epoch: int = 0
    ) -> dict[str, float]:
        """Accumulate the gradient of a group's weighted loss over its trained timesteps; returns logged sums."""
        if self.nft:
            return self._backward_nft(b, advantages, weights)
        return self._backward_grpo(b, advantages, weights, epoch)

    def _backward_nft(self, b: Batch, advantages: torch.Tensor, weights: torch.Tensor) -> dict[str, float]:
        nc = self.cfg.nft
        n = self.timesteps(b).shape[1]
        r = optimality_probability(advantages, nc.adv_clip)
        sums = {"loss/policy": 0.0, "loss/kl": 0.0, "count": 0.0}
        for j in range(n):
            self._nograd(b, j)
            xt, s, eps = self._nft_inputs(b, j)
            v = self.policy.velocity(xt, s, b.cond)
            parts = nft_loss(
                v,
                b.cache.pop(("old", j)),
                b.cache.pop(("ref", j), None),
                b.final,
                eps,
                s,
                r,
                beta=nc.beta,
                kl_coef=nc.kl_coef,
                space=nc.space,
                scale=nc.adv_clip,
                weights=weights / n,
            )
            parts.loss.backward()
            _add(sums, parts.policy, parts.kl)
        return sums

    def _backward_grpo(
        self, b: Batch, advantages: torch.Tensor, weights: torch.Tensor, epoch: int
    ) -> dict[str, float]:
        gc = self.cfg.grpo
        assert b.states is not None and b.log_probs is not None
        plan = self.timesteps(b, epoch)[0]
        n, smax = len(plan), sigma_max_of(self.sigmas)
        a = advantages.clamp(-gc.adv_clip, gc.adv_clip)
        sums = {"loss/policy": 0.0, "loss/kl": 0.0, "clip_frac": 0.0, "count": 0.0}
        for j, tj in enumerate(int(x) for x in plan):
            self._nograd(b, j, epoch)
            x, s_val, s_next = b.states[:, tj], float(self.sigmas[tj]), float(self.sigmas[tj + 1])
            v = self._velocity(b)(x.to(self.policy.dtype), torch.full((x.shape[0],), s_val), b.cond)
            st = sde_step(
                v,
                x,
                s_val,
                s_next,
                noise_level=gc.noise_level,
                sigma_max=smax,
                next_state=b.states[:, tj + 1],
            )
            ref = b.cache.get(("ref", tj)) if gc.kl_coef > 0 else None
            parts, clip_frac = grpo_loss(
                st.log_prob,
                b.log_probs[:, tj].to(st.log_prob.device),
                a,
                st.mean,
                ref,
                st.std_t,
                clip_range=gc.clip_range,
                kl_coef=gc.kl_coef,
                weights=weights / n,
            )
            parts.loss.backward()
            _add(sums, parts.policy, parts.kl)
            sums["clip_frac"] += float(clip_frac)
        return sums

    def release(self, b: Batch) -> None:
        """Drop a group's cached predictions once its last epoch is trained."""
        b.cache.clear()


def _add(sums: dict[str, float], policy: Any, kl: Any) -> None:
    sums["loss/policy"] += float(policy)
    sums["loss/kl"] += float(kl)
    sums["count"] += 1.0
