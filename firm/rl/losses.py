"""The two policy losses, on batches of per-sample tensors.

DiffusionNFT (forward-process RL): with the implicit policies v⁺ = (1−β)·v_old + β·v_θ and v⁻ = (1+β)·v_old − β·v_θ,
the per-sample loss is r·‖v⁺ − v‖² + (1−r)·‖v⁻ − v‖² (flow-matching target v = ε − x0), plus kl_coef·‖v_θ − v_ref‖².
In "x0" space (the reference implementation) both terms are measured on x̂0 = x_σ − σ·v± with a per-sample adaptive
weight (the detached mean absolute x0 error), and divided by β.

Flow-GRPO: clipped policy ratio on the SDE step log-probs with group advantages, plus a KL to the reference policy on
the step means: mean‖μ_θ − μ_ref‖² / (2·std_t²) with std_t = a·√(σ/(1−σ)), the step's std without its √(σ−σ')
factor (Flow-GRPO's `train_sd3.py`).

Both take optional per-sample `weights` [B]: the loss is then Σ w_i·loss_i instead of the batch mean, so a step's
gradient can be accumulated over groups and ranks as one mean over all of its trained samples (a weight of 0 drops a
sample from the loss and its denominator: a sample without a reward, and under Flow-GRPO one whose advantage is 0 —
`firm.rl.advantages.trained_flags`; NFT trains zero-advantage samples). The logged `policy` and `kl` are plain means
over the samples with a positive weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=tuple(range(1, t.ndim)))


@dataclass
class LossParts:
    loss: torch.Tensor  # scalar, what is back-propagated
    policy: torch.Tensor  # scalar
    kl: torch.Tensor  # scalar


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def _reduce(per_sample: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(what is back-propagated, what is logged) for a per-sample loss term."""
    if weights is None:
        return per_sample.mean(), per_sample.detach().mean()
    w = weights.to(per_sample.device, per_sample.dtype)
    live = w > 0
    logged = per_sample.detach()[live].mean() if bool(live.any()) else per_sample.detach().sum() * 0
    return (per_sample * w).sum(), logged


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    v_ref: torch.Tensor | None,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    r: torch.Tensor,
    *,
    beta: float = 1.0,
    kl_coef: float = 1e-4,
    space: str = "x0",
    scale: float = 1.0,
    weights: torch.Tensor | None = None,
) -> LossParts:
    """DiffusionNFT loss (batch mean, or Σ weights·loss). `sigma` and `r` are [B]; `scale` multiplies the policy
    term."""
    v_theta, v_old, x0, noise = v_theta.float(), v_old.float().detach(), x0.float(), noise.float()
    v_pos = (1 - beta) * v_old + beta * v_theta
    v_neg = (1 + beta) * v_old - beta * v_theta
    rr = r.float().to(v_theta.device)
    if space == "velocity":
        target = noise - x0
        pos = _per_sample_mean((v_pos - target) ** 2)
        neg = _per_sample_mean((v_neg - target) ** 2)
    elif space == "x0":
        s = _bcast(sigma.float().to(v_theta.device), x0)
        xt = (1 - s) * x0 + s * noise
        x0_pos = xt - s * v_pos
        x0_neg = xt - s * v_neg
        with torch.no_grad():
            w_pos = _bcast(_per_sample_mean((x0_pos.double() - x0.double()).abs()).clamp(min=1e-5), x0)
            w_neg = _bcast(_per_sample_mean((x0_neg.double() - x0.double()).abs()).clamp(min=1e-5), x0)
        pos = _per_sample_mean((x0_pos - x0) ** 2 / w_pos) / beta
        neg = _per_sample_mean((x0_neg - x0) ** 2 / w_neg) / beta
    else:
        raise ValueError(f"unknown NFT space {space!r}")
    policy, policy_log = _reduce((rr * pos + (1 - rr) * neg) * scale, weights)
    if v_ref is not None and kl_coef > 0:
        kl, kl_log = _reduce(_per_sample_mean((v_theta - v_ref.float().detach()) ** 2), weights)
    else:
        kl = kl_log = torch.zeros((), device=v_theta.device)
    return LossParts(loss=policy + kl_coef * kl, policy=policy_log, kl=kl_log)


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mean: torch.Tensor,
    ref_mean: torch.Tensor | None,
    std_t: float,
    *,
    clip_range: float = 1e-4,
    kl_coef: float = 0.04,
    weights: torch.Tensor | None = None,
) -> tuple[LossParts, torch.Tensor]:
    """Flow-GRPO loss for one timestep of a batch; also returns the fraction of clipped ratios. `std_t` is the SDE's
    a·√(σ/(1−σ)) at this timestep (`SDEStep.std_t`)."""
    adv = advantages.float().to(log_prob.device)
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    policy, policy_log = _reduce(torch.maximum(unclipped, clipped), weights)
    clipped_frac = ((ratio - 1.0).abs() > clip_range).float().detach()
    clip_frac = _reduce(clipped_frac, weights)[1]
    if ref_mean is not None and kl_coef > 0:
        kl, kl_log = _reduce(_per_sample_mean((mean - ref_mean.detach()) ** 2) / (2 * std_t**2), weights)
    else:
        kl = kl_log = torch.zeros((), device=log_prob.device)
    return LossParts(loss=policy + kl_coef * kl, policy=policy_log, kl=kl_log), clip_frac
