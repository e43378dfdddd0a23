"""Rollout samplers on the flow-matching σ schedule (x_σ = (1−σ)·x0 + σ·ε, v = ε − x0, α = 1 − σ).

- `ode_rollout`: deterministic rollouts, DiffusionNFT's way of collecting clean samples. `solver="euler"`:
  x_{σ'} = x_σ + (σ' − σ)·v. `solver="dpm2"` (the official trainers' default): multistep second-order DPM-Solver++
  in data prediction x̂0 = x − σ·v with λ = log(α/σ): the first and the last step are first order (DDIM, which on
  this schedule equals Euler), every other step adds the correction −½·α'(e^{−h} − 1)·(x̂0_i − x̂0_{i−1})/r with
  h = λ' − λ and r = (λ − λ_prev)/h (r is infinite after σ = 1, which makes that step first order).
- `sde_rollout`: Flow-GRPO's SDE with the same marginals; each step is Gaussian with mean μ_θ(x_σ) and std
  std_t·√(σ−σ'), std_t = a·√(σ/(1−σ)), so every step has a log-probability. `sde_step` recomputes a step's log-prob
  for a given next state, which the GRPO loss uses (it equals the sampling pass for the same weights).
- `guided`: classifier-free guidance v_u + s·(v_c − v_u) around any velocity function (optionally without gradient
  through v_u, as Flow-GRPO trains).
- `train_timesteps`: which rollout timesteps a step trains on, per sample or shared.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from firm.rl.policies.base import Conditioning

VelocityFn = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


@dataclass
class Trajectory:
    """A batch of rollouts. `states[:, i]` is x at sigmas[i]; `log_probs[:, i]` is log p(states[:, i+1] | states[:, i])."""

    sigmas: torch.Tensor  # [T+1]
    final: torch.Tensor  # [B, ...] clean latents
    states: torch.Tensor | None = None  # [B, T+1, ...]
    log_probs: torch.Tensor | None = None  # [B, T]


Solver = Literal["dpm2", "euler"]


def _lam(sigma: float) -> float:
    """λ = log(α/σ) = log((1 − σ)/σ); −inf at σ = 1 (pure noise)."""
    return -math.inf if sigma >= 1.0 else math.log(1.0 - sigma) - math.log(sigma)


def dpm2_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor | None,
    sigma_prev: float | None,
    sigma: float,
    sigma_next: float,
) -> torch.Tensor:
    """One multistep DPM-Solver++(2M) step from σ to σ_next in float32; `x0_prev` (at `sigma_prev`) is None for a
    first-order step. With σ_next = 0 it returns x0."""
    x, x0 = x.float(), x0.float()
    if sigma_next <= 0.0:
        return x0
    if x0_prev is None or sigma_prev is None or sigma_prev >= 1.0:  # first order: DDIM = Euler here
        return (sigma_next / sigma) * x + (1.0 - sigma_next - (1.0 - sigma) * sigma_next / sigma) * x0
    h = _lam(sigma_next) - _lam(sigma)
    r = (_lam(sigma) - _lam(sigma_prev)) / h
    coef = -(1.0 - sigma_next) * math.expm1(-h)  # α'(1 − e^{−h})
    d1 = (x0 - x0_prev.float()) / r
    return (sigma_next / sigma) * x + coef * (x0 + 0.5 * d1)


@torch.no_grad()
def ode_rollout(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    solver: Solver = "euler",
) -> Trajectory:
    x = noise
    last = len(sigmas) - 2
    x0_prev: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity(x, torch.full((x.shape[0],), s, device=x.device), cond)
        if solver == "euler":
            x = (x.float() + (s_next - s) * v.float()).to(noise.dtype)
            continue
        x0 = x.float() - s * v.float()
        second = i > 0 and i < last
        x_next = dpm2_step(x, x0, x0_prev if second else None, float(sigmas[i - 1]) if i else None, s, s_next)
        x0_prev, x = x0, x_next.to(noise.dtype)
    return Trajectory(sigmas=sigmas, final=x)


def guided(
    velocity: VelocityFn, uncond: Conditioning, scale: float, *, detach_uncond: bool = False
) -> VelocityFn:
    """Classifier-free guidance: v_u + scale·(v_c − v_u), both in one batched call (`uncond` matches the batch).

    `detach_uncond`: no gradient through the unconditional prediction, as Flow-GRPO's policy update computes it
    (`compute_log_prob` in `scripts/train_sd3.py` detaches `noise_pred_uncond`): the gradient is then scale·∂v_c only.
    """
    if scale == 1.0:
        return velocity

    def fn(x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        both = velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), Conditioning.cat([uncond, cond]))
        v_u, v_c = both.chunk(2)
        if detach_uncond:
            v_u = v_u.detach()
        return v_u + scale * (v_c - v_u)

    return fn


@dataclass
class SDEStep:
    next: torch.Tensor
    mean: torch.Tensor
    std: float  # of the step: std_t·√(σ − σ')
    std_t: float  # a·√(σ/(1−σ)), the std Flow-GRPO's KL divides by
    log_prob: torch.Tensor  # [B], mean over latent elements


def sde_step(
    v: torch.Tensor,
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    *,
    noise_level: float,
    sigma_max: float,
    next_state: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SDEStep:
    """One Flow-GRPO SDE step in float32. With `next_state` given, only its log-prob is computed."""
    v, x = v.float(), x.float()
    dt = sigma_next - sigma  # negative
    s_safe = sigma_max if sigma >= 1.0 else sigma
    std_t = math.sqrt(sigma / (1.0 - s_safe)) * noise_level
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_t * math.sqrt(-dt)
    if next_state is None:
        eps = torch.randn(x.shape, generator=generator).to(x.device)
        next_state = mean + std * eps
    next_state = next_state.float()
    lp = -((next_state.detach() - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return SDEStep(
        next=next_state, mean=mean, std=std, std_t=std_t, log_prob=lp.mean(dim=tuple(range(1, lp.ndim)))
    )


def sigma_max_of(sigmas: torch.Tensor) -> float:
    """σ used in place of σ=1 in the std (which would divide by zero): the schedule's second value."""
    return float(sigmas[1]) if len(sigmas) > 1 else 0.99


@torch.no_grad()
def sde_rollout(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    noise_level: float,
    generator: torch.Generator,
) -> Trajectory:
    x = noise.float()
    states, log_probs = [x], []
    smax = sigma_max_of(sigmas)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity(x.to(noise.dtype), torch.full((x.shape[0],), s, device=x.device), cond)
        step = sde_step(v, x, s, s_next, noise_level=noise_level, sigma_max=smax, generator=generator)
        x = step.next
        states.append(x)
        log_probs.append(step.log_prob)
    return Trajectory(
        sigmas=sigmas,
        final=x.to(noise.dtype),
        states=torch.stack(states, dim=1),
        log_probs=torch.stack(log_probs, 1),
    )


TimestepDraw = Literal["per_sample", "shared", "first"]


def train_timestep_count(num_steps: int, fraction: float) -> int:
    """int(fraction·T) rollout timesteps are trained on, at least one (10 steps at 0.99 → 9, 6 → 5)."""
    return max(1, math.floor(fraction * num_steps + 1e-9))


def train_timesteps(
    num_steps: int, fraction: float, draw: TimestepDraw, n_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """[n_samples, n] indices of the timesteps each sample trains on, in training order. per_sample: each sample's
    own random subset (a permutation's first n); shared: one random subset for all; first: 0..n−1 in order."""
    n = train_timestep_count(num_steps, fraction)
    if draw == "per_sample":
        return torch.stack([torch.randperm(num_steps, generator=generator)[:n] for _ in range(n_samples)])
    if draw == "shared":
        return torch.randperm(num_steps, generator=generator)[:n].expand(n_samples, n).clone()
    return torch.arange(n).expand(n_samples, n).clone()
