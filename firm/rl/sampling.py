"""Rollout samplers on the flow-matching σ schedule.

- `ode_rollout`: deterministic Euler steps x_{σ'} = x_σ + (σ' − σ)·v — DiffusionNFT collects clean samples this way.
- `sde_rollout`: Flow-GRPO's SDE with the same marginals; each step is Gaussian with mean μ_θ(x_σ) and std
  s = a·√(σ/(1−σ))·√(σ−σ'), so every step has a log-probability. `sde_step` recomputes a step's log-prob for a
  given next state, which the GRPO loss uses (it equals the sampling pass for the same weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


@torch.no_grad()
def ode_rollout(
    velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Conditioning
) -> Trajectory:
    x = noise
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity(x, torch.full((x.shape[0],), s, device=x.device), cond)
        x = (x.float() + (s_next - s) * v.float()).to(noise.dtype)
    return Trajectory(sigmas=sigmas, final=x)


@dataclass
class SDEStep:
    next: torch.Tensor
    mean: torch.Tensor
    std: float
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
    return SDEStep(next=next_state, mean=mean, std=std, log_prob=lp.mean(dim=tuple(range(1, lp.ndim))))


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


def train_timestep_indices(num_steps: int, fraction: float, generator: torch.Generator) -> list[int]:
    """The rollout timesteps a step trains on: ceil(fraction·T) of them, in random order."""
    n = max(1, math.ceil(fraction * num_steps - 1e-9))
    return torch.randperm(num_steps, generator=generator)[:n].tolist()
