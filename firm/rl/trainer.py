"""One RL trainer loop for both algorithms (DiffusionNFT, Flow-GRPO) and both tasks (edit, gen).

A step: each rank takes its share of the step's prompts; for each prompt it rolls out a group of K samples (ODE for
NFT with the old/EMA policy, SDE with log-probs for GRPO with the current policy) and hands the decoded images to the
reward (in a background thread when `reward.async_overlap`, so group i is scored while group i+1 rolls out); group
advantages are computed per prompt (unparseable samples dropped); then the LoRA is updated, one micro-batch and
optimizer step per prompt group, with gradients averaged over ranks (data parallel over prompts), clipped, AdamW; NFT
then moves the old adapter towards the new weights (EMA). With async rewards each group's scores are awaited only
when the update reaches that group, so the scoring of the last groups overlaps the update of the first ones; if a
reward call fails mid-update the step's weight and optimizer changes are rolled back before the error propagates.
All randomness of a step is drawn from generators seeded by (seed, step, rank), so a resumed run repeats exactly the
steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from firm.errors import ConfigError, FirmError
from firm.rl import lora as lora_mod
from firm.rl.advantages import group_advantages, optimality_probability
from firm.rl.checkpoint import (
    check_fresh_output,
    export_final,
    find_resume,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from firm.rl.config import RLConfig
from firm.rl.data import PromptItem, load_prompts, load_source, step_prompts
from firm.rl.losses import grpo_loss, nft_loss
from firm.rl.monitor import IdentityCopyFlag, MetricLogger, detail, entropy, source_similarity
from firm.rl.policies.base import Conditioning, DiffusionPolicy
from firm.rl.policies.loading import load_policy, pick_device
from firm.rl.rewards import RewardFunction, RewardItem, build_reward, is_scored, with_retries
from firm.rl.sampling import ode_rollout, sde_rollout, sde_step, train_timestep_indices
from firm.schemas import RewardBreakdown

log = logging.getLogger(__name__)

SUB_SCORES = ("execution", "consistency", "instruction", "quality")
EDIT_EVAL_ITEMS = 4  # editing eval grids: the first 4 (instruction, source) items of the prompt file
WARN_AFTER_STEPS = 2  # reward.warn_parse_failure_rate: consecutive steps above it before the first warning
WARN_EVERY_STEPS = 10  # … and how often the warning repeats while it lasts


class NoScoredSamplesError(FirmError):
    """Several steps in a row without a single parsed reward: the run cannot learn anything."""


def scored_rewards(rewards: list[RewardBreakdown]) -> list[float | None]:
    """The rewards the advantages are computed from: None for every sample that is not scored."""
    return [b.reward if is_scored(b) else None for b in rewards]


@dataclass
class Group:
    """One prompt's K rollouts."""

    prompt: str
    cond: Conditioning  # repeated K times
    final: torch.Tensor  # [K, ...] clean latents
    images: torch.Tensor  # [K, 3, H, W]
    source: torch.Tensor | None
    states: torch.Tensor | None = None  # GRPO: [K, T+1, ...]
    log_probs: torch.Tensor | None = None  # GRPO: [K, T]
    rewards: list[RewardBreakdown] = field(default_factory=list)
    pending: Future[list[RewardBreakdown]] | None = None  # async: the reward call still in flight


@dataclass
class StepResult:
    step: int
    metrics: dict[str, Any]


def _seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p)) % (2**62)
    return h


def _gen(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


class Trainer:
    """The RL loop. `Trainer(cfg).train()` runs `cfg.steps` steps (resuming per `cfg.checkpoint.resume`), publishes
    checkpoints and the final LoRA; `reward` / `policy` can be passed in instead of being built from the config."""

    def __init__(
        self,
        cfg: RLConfig,
        *,
        reward: RewardFunction | None = None,
        policy: DiffusionPolicy | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        check_fresh_output(cfg.checkpoint.resume, cfg.output_uri)  # before anything is loaded or written
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        if cfg.sampling.prompts_per_step % self.world:
            raise ConfigError(
                f"sampling.prompts_per_step={cfg.sampling.prompts_per_step} is not divisible by {self.world} ranks"
            )
        self.device = pick_device(cfg.device)
        self.prompts: list[PromptItem] = load_prompts(cfg.data.prompts, cfg.task, cfg.data.max_prompt_chars)
        self.policy = policy or load_policy(cfg.policy, self.device)
        lc = cfg.lora
        torch.manual_seed(cfg.seed)  # the same LoRA init on every rank …
        lora_mod.add_lora(
            self.policy.transformer, rank=lc.rank, alpha=lc.alpha, init=lc.init, targets=lc.target_modules
        )
        self.params = lora_mod.trainable_params(self.policy.transformer)
        if self.world > 1:  # … and rank 0's weights everywhere, whatever the RNG did
            for p in self.params + lora_mod.adapter_params(self.policy.transformer, lora_mod.OLD):
                dist.broadcast(p.data, src=0)
        torch.manual_seed(_seed(cfg.seed, self.rank))
        oc = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=oc.lr, betas=oc.betas, eps=oc.eps, weight_decay=oc.weight_decay
        )
        self.reward = reward or build_reward(cfg.reward, cfg.task)
        self.run_dir = Path(run_dir) if run_dir else _default_run_dir(cfg)
        from firm.storage.base import missing_dirs

        self._new_dirs = missing_dirs(self.run_dir)  # what a failed start must remove again
        self.metrics = MetricLogger(self.run_dir, tensorboard=cfg.monitor.tensorboard, enabled=self.rank == 0)
        self.identity_flag = IdentityCopyFlag()
        self.step = 0
        self._unscored_steps = 0  # consecutive steps without one scored sample (all ranks)
        self._high_failure_steps = 0  # consecutive steps above reward.warn_parse_failure_rate
        self._statuses: dict[str, int] = {}  # this rank's failed statuses over the current unscored streak
        self._sources: dict[str, torch.Tensor] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=cfg.reward.max_concurrency, thread_name_prefix="firm-reward"
        )

    # ---------------------------------------------------------------- resume / checkpoints
    def maybe_resume(self) -> str | None:
        uri = find_resume(self.cfg.checkpoint.resume, self.cfg.output_uri)
        if uri is None:
            return None
        ck = load_checkpoint(uri)
        lora_mod.load_adapter_state(self.policy.transformer, ck.lora, lora_mod.TRAINABLE)
        lora_mod.load_adapter_state(self.policy.transformer, ck.old_lora, lora_mod.OLD)
        self.optimizer.load_state_dict(ck.trainer_state["optimizer"])
        set_rng_state(ck.trainer_state["rng"])
        self.step = ck.step
        self.metrics.truncate_after(ck.step)
        log.info("resumed from %s at step %d", uri, ck.step)
        return uri

    def checkpoint(self) -> str | None:
        if self.rank != 0:
            return None
        t = self.policy.transformer
        return save_checkpoint(
            self.policy,
            self.cfg.output_uri,
            self.step,
            lora_mod.adapter_state(t, lora_mod.TRAINABLE),
            lora_mod.adapter_state(t, lora_mod.OLD),
            self.optimizer,
            {
                "algorithm": self.cfg.algorithm,
                "task": self.cfg.task,
                "config": self.cfg.model_dump(mode="json"),
            },
            extra_files=[self.metrics.path],
        )

    # ---------------------------------------------------------------- rollouts
    def _source(self, item: PromptItem) -> torch.Tensor | None:
        if item.source is None:
            return None
        if item.source not in self._sources:
            self._sources[item.source] = load_source(item.source, self.policy.resolution)
        return self._sources[item.source]

    def _rollout_group(self, item: PromptItem, step: int, gi: int) -> Group:
        cfg, pol = self.cfg, self.policy
        k = cfg.sampling.group_size
        source = self._source(item)
        cond1 = pol.encode([item.prompt], [source] if source is not None else None)
        cond = cond1.repeat(k)
        g = _gen(cfg.seed, step, self.rank, gi, 1)
        noise = pol.initial_noise(k, g, cond)
        sigmas = pol.sigmas(cfg.sampling.num_steps, cond)
        if cfg.algorithm == "nft":
            adapter = lora_mod.OLD if cfg.sampling.rollout_policy == "old" else lora_mod.TRAINABLE
            with lora_mod.using(pol.transformer, adapter):
                traj = ode_rollout(pol.velocity, noise, sigmas, cond)
        else:
            traj = sde_rollout(
                pol.velocity, noise, sigmas, cond, noise_level=cfg.grpo.noise_level, generator=g
            )
        images = pol.decode(traj.final, cond)
        return Group(item.prompt, cond, traj.final, images, source, traj.states, traj.log_probs)

    def _score(self, group: Group) -> list[RewardBreakdown]:
        rc = self.cfg.reward
        items = [
            RewardItem(self.cfg.task, group.prompt, img, group.source, sample_id=f"{self.step}-{i}")
            for i, img in enumerate(group.images)
        ]
        return with_retries(self.reward, items, rc.retries, rc.retry_backoff_s)

    def collect(self, step: int) -> tuple[list[Group], dict[str, float]]:
        idx = step_prompts(
            len(self.prompts), step, self.cfg.seed, self.cfg.sampling.prompts_per_step, self.rank, self.world
        )
        groups: list[Group] = []
        t_roll = t_wait = 0.0
        for gi, pi in enumerate(idx):
            t0 = time.perf_counter()
            grp = self._rollout_group(self.prompts[pi], step, gi)
            t_roll += time.perf_counter() - t0
            groups.append(grp)
            if self.cfg.reward.async_overlap:  # scored while the next group rolls out; awaited by the update
                grp.pending = self._pool.submit(self._score, grp)
            else:
                t0 = time.perf_counter()
                grp.rewards = self._score(grp)
                t_wait += time.perf_counter() - t0
        return groups, {"time/rollout": t_roll, "time/reward_wait": t_wait}

    def _await_rewards(self, grp: Group, times: dict[str, float]) -> None:
        """Block until the group's async reward call is done (its wait is counted as reward wait)."""
        if grp.pending is None:
            return
        t0 = time.perf_counter()
        try:
            grp.rewards = grp.pending.result()  # raises RewardServiceError: the step fails
        finally:
            times["time/reward_wait"] = times.get("time/reward_wait", 0.0) + time.perf_counter() - t0
        grp.pending = None

    # ---------------------------------------------------------------- update
    def _all_reduce_grads(self, has_data: bool) -> int:
        """Average the LoRA gradients over ranks; returns how many ranks had scored samples in this micro-batch."""
        if self.world == 1:
            return int(has_data)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flag = torch.ones(1, dtype=grads[0].dtype, device=grads[0].device) * float(has_data)
        flat = torch.cat([g.reshape(-1) for g in grads] + [flag])
        dist.all_reduce(flat)
        contributing = round(float(flat[-1]))
        flat /= self.world
        off = 0
        for p, g in zip(self.params, grads, strict=True):
            n = g.numel()
            p.grad = flat[off : off + n].view_as(p).clone()
            off += n
        return contributing

    def _optimizer_step(self, has_data: bool) -> float:
        if self._all_reduce_grads(has_data) == 0:
            # no rank scored a sample of this micro-batch: nothing to learn from, so AdamW's momentum and weight
            # decay must not move the weights either
            self.optimizer.zero_grad(set_to_none=True)
            return 0.0
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _scored(self, grp: Group, times: dict[str, float]) -> tuple[list[int], torch.Tensor] | None:
        """A group's micro-batch: the indices of its scored samples and their group advantages (None: no baseline)."""
        self._await_rewards(grp, times)
        adv = group_advantages([scored_rewards(grp.rewards)], clip=self._adv_clip()).advantages
        keep = [i for i, a in enumerate(adv) if a is not None]
        if not keep:
            return None
        return keep, torch.tensor([adv[i] for i in keep], dtype=torch.float32)

    def update(self, step: int, groups: list[Group], times: dict[str, float]) -> dict[str, float]:
        """One micro-batch and optimizer step per prompt group, in order (the same count on every rank)."""
        g = _gen(self.cfg.seed, step, self.rank, 2)
        sigmas = self.policy.sigmas(self.cfg.sampling.num_steps, groups[0].cond)
        if self.cfg.algorithm == "nft":
            return self._update_nft(step, groups, times, sigmas, g)
        return self._update_grpo(groups, times, sigmas, g)

    def _update_nft(
        self,
        step: int,
        groups: list[Group],
        times: dict[str, float],
        sigmas: torch.Tensor,
        g: torch.Generator,
    ) -> dict[str, float]:
        nc, pol, t = self.cfg.nft, self.policy, self.policy.transformer
        t_idx = train_timestep_indices(self.cfg.sampling.num_steps, nc.timestep_fraction, g)
        sums = {"loss/policy": 0.0, "loss/kl": 0.0}
        count, norms = 0, []
        for grp in groups:
            batch = self._scored(grp, times)
            if batch is not None:
                keep, advantages = batch
                x0, cond = grp.final[keep], grp.cond.select(keep)
                r = optimality_probability(advantages, nc.adv_clip)
                for j in t_idx:
                    s = torch.full((len(keep),), float(sigmas[j]))
                    eps = torch.randn(x0.shape, generator=g).to(x0.device, x0.dtype)
                    sb = s.to(x0.device, x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
                    xt = (1 - sb) * x0 + sb * eps
                    with torch.no_grad(), lora_mod.using(t, lora_mod.OLD):
                        v_old = pol.velocity(xt, s, cond)
                    v_ref = None
                    if nc.kl_coef > 0:
                        with torch.no_grad(), lora_mod.using(t, None):
                            v_ref = pol.velocity(xt, s, cond)
                    v = pol.velocity(xt, s, cond)
                    parts = nft_loss(
                        v,
                        v_old,
                        v_ref,
                        x0,
                        eps,
                        s,
                        r,
                        beta=nc.beta,
                        kl_coef=nc.kl_coef,
                        space=nc.space,
                        scale=nc.adv_clip,
                    )
                    (parts.loss / len(t_idx)).backward()
                    sums["loss/policy"] += float(parts.policy)
                    sums["loss/kl"] += float(parts.kl)
                    count += 1
            norms.append(self._optimizer_step(batch is not None))
        decay = lora_mod.ema_decay(step, nc.ema_max_decay, nc.ema_ramp)
        lora_mod.ema_update(t, decay)
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out.update({"grad_norm": sum(norms) / len(norms), "ema_decay": decay})
        return out

    def _update_grpo(
        self,
        groups: list[Group],
        times: dict[str, float],
        sigmas: torch.Tensor,
        g: torch.Generator,
    ) -> dict[str, float]:
        gc, pol, t = self.cfg.grpo, self.policy, self.policy.transformer
        from firm.rl.sampling import sigma_max_of

        smax = sigma_max_of(sigmas)
        sums = {"loss/policy": 0.0, "loss/kl": 0.0, "clip_frac": 0.0}
        count, norms = 0, []
        for _ in range(gc.inner_epochs):
            t_idx = train_timestep_indices(self.cfg.sampling.num_steps, gc.timestep_fraction, g)
            for grp in groups:
                batch = self._scored(grp, times)
                if batch is not None and grp.states is not None and grp.log_probs is not None:
                    keep, advantages = batch
                    states, old_lp, cond = grp.states[keep], grp.log_probs[keep], grp.cond.select(keep)
                    a = advantages.clamp(-gc.adv_clip, gc.adv_clip)
                    for j in t_idx:
                        s, s_next = float(sigmas[j]), float(sigmas[j + 1])
                        x, x_next = states[:, j], states[:, j + 1]
                        sv = torch.full((len(keep),), s)
                        xin = x.to(self.policy.dtype)
                        v = pol.velocity(xin, sv, cond)
                        st = sde_step(
                            v, x, s, s_next, noise_level=gc.noise_level, sigma_max=smax, next_state=x_next
                        )
                        ref_mean = None
                        if gc.kl_coef > 0:
                            with torch.no_grad(), lora_mod.using(t, None):
                                v_ref = pol.velocity(xin, sv, cond)
                            ref_mean = sde_step(
                                v_ref,
                                x,
                                s,
                                s_next,
                                noise_level=gc.noise_level,
                                sigma_max=smax,
                                next_state=x_next,
                            ).mean
                        parts, cf = grpo_loss(
                            st.log_prob,
                            old_lp[:, j].to(st.log_prob.device),
                            a,
                            st.mean,
                            ref_mean,
                            st.std,
                            clip_range=gc.clip_range,
                            kl_coef=gc.kl_coef,
                        )
                        (parts.loss / len(t_idx)).backward()
                        sums["loss/policy"] += float(parts.policy)
                        sums["loss/kl"] += float(parts.kl)
                        sums["clip_frac"] += float(cf)
                        count += 1
                norms.append(self._optimizer_step(batch is not None))
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out["grad_norm"] = sum(norms) / len(norms)
        return out

    # ---------------------------------------------------------------- metrics
    def _reward_metrics(self, groups: list[Group], stats: Any) -> dict[str, float]:
        """Reward statistics over all ranks (sums all-reduced as one float64 vector)."""
        rs = [float(b.reward) for g in groups for b in g.rewards if is_scored(b)]  # type: ignore[arg-type]
        vec = [float(sum(rs)), float(sum(r * r for r in rs)), float(len(rs)), float(stats.dropped_samples)]
        vec += [float(stats.zero_std_groups), float(stats.dropped_groups), float(stats.groups)]
        for name in SUB_SCORES:
            vals = [getattr(b, name) for g in groups for b in g.rewards if getattr(b, name) is not None]
            vec += [float(sum(vals)), float(len(vals))]
        images = torch.cat([g.images for g in groups])
        if self.cfg.task == "edit":
            srcs = torch.cat([g.source.unsqueeze(0).expand(len(g.images), -1, -1, -1) for g in groups])  # type: ignore[union-attr]
            vec += [float(source_similarity(images, srcs).sum()), 0.0]
        else:
            vec += [float(detail(images).sum()), float(entropy(images).sum())]
        vec.append(float(images.shape[0]))
        t = torch.tensor(vec, dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(t)
        v = t.tolist()
        n = max(v[2], 1.0)
        mean = v[0] / n
        m: dict[str, float] = {
            "reward/mean": mean,
            "reward/n": v[2],
            "reward/std": math.sqrt(max(v[1] / n - mean * mean, 0.0)),
            "reward/parse_failure_rate": v[3] / max(v[2] + v[3], 1.0),
            "groups/zero_std_ratio": v[4] / max(v[6], 1.0),
            "groups/dropped": v[5],
        }
        off = 7
        for name in SUB_SCORES:
            if v[off + 1] > 0:
                m[f"reward/{name}"] = v[off] / v[off + 1]
            off += 2
        n_img = max(v[-1], 1.0)
        if self.cfg.task == "edit":
            m["hacking/source_similarity"] = v[off] / n_img
        else:
            m["hacking/detail"] = v[off] / n_img
            m["hacking/entropy"] = v[off + 1] / n_img
        return m

    @torch.no_grad()
    def eval_grid(self, step: int) -> Path | None:
        prompts = self.cfg.data.eval_prompts
        if self.rank != 0 or (self.cfg.task == "gen" and not prompts):
            return None
        # editing needs source images: the fixed eval set is the first items of the prompt file
        items = [PromptItem(p) for p in prompts] if self.cfg.task == "gen" else self.prompts[:EDIT_EVAL_ITEMS]
        imgs = []
        for i, it in enumerate(items):
            source = self._source(it)
            cond = self.policy.encode([it.prompt], [source] if source is not None else None)
            noise = self.policy.initial_noise(1, _gen(self.cfg.seed, 7919, i), cond)
            traj = ode_rollout(
                self.policy.velocity, noise, self.policy.sigmas(self.cfg.sampling.eval_num_steps, cond), cond
            )
            imgs.append(self.policy.decode(traj.final, cond))
        out = self.run_dir / "samples" / f"step-{step:08d}.png"
        self.metrics.image_grid(step, torch.cat(imgs), out)
        return out

    # ---------------------------------------------------------------- loop
    def train_step(self) -> StepResult:
        step = self.step
        t0 = time.perf_counter()
        groups, times = self.collect(step)
        t1, wait0 = time.perf_counter(), times["time/reward_wait"]
        # async: rewards still in flight may fail mid-update; the step then leaves weights and optimizer untouched
        snapshot = self._snapshot() if any(gr.pending is not None for gr in groups) else None
        try:
            upd = self.update(step, groups, times)
        except BaseException:
            if snapshot is not None:
                self._restore(snapshot)
            raise
        times["time/update"] = time.perf_counter() - t1 - (times["time/reward_wait"] - wait0)
        times["time/step"] = time.perf_counter() - t0
        stats = group_advantages([scored_rewards(g.rewards) for g in groups], clip=self._adv_clip())
        if stats.dropped_samples:
            log.warning("step %d: dropped %d unparseable samples", step, stats.dropped_samples)
        metrics = {**self._reward_metrics(groups, stats), **upd, **times}
        if self.cfg.task == "edit":
            metrics["hacking/identity_copy_flag"] = float(
                self.identity_flag.update(metrics["hacking/source_similarity"])
            )
        self.step = step + 1
        self._track_scoring(groups, metrics)
        return StepResult(step, metrics)

    def _track_scoring(self, groups: list[Group], metrics: dict[str, Any]) -> None:
        """Count unscored steps and sustained parse failures (from the all-reduced metrics, so every rank agrees)."""
        rc = self.cfg.reward
        rate = float(metrics["reward/parse_failure_rate"])
        if metrics["reward/n"] == 0:
            self._unscored_steps += 1
            for b in (b for g in groups for b in g.rewards if not is_scored(b)):
                status = b.status if b.status != "ok" else "ok but no finite reward"
                self._statuses[status] = self._statuses.get(status, 0) + 1
        else:
            self._unscored_steps = 0
            self._statuses.clear()
        self._high_failure_steps = self._high_failure_steps + 1 if rate > rc.warn_parse_failure_rate else 0
        n = self._high_failure_steps
        if self.rank == 0 and n >= WARN_AFTER_STEPS and (n - WARN_AFTER_STEPS) % WARN_EVERY_STEPS == 0:
            log.warning(
                "step %d: parse failure rate %.2f, above reward.warn_parse_failure_rate=%.2f for %d steps: %s",
                self.step - 1,
                rate,
                rc.warn_parse_failure_rate,
                n,
                _LIKELY_CAUSE,
            )

    def _check_scoring(self) -> None:
        """Fail once `reward.max_unscored_steps` steps in a row had no scored sample (after they were logged)."""
        limit = self.cfg.reward.max_unscored_steps
        if not limit or self._unscored_steps < limit:
            return
        seen = ", ".join(f"{k} ×{v}" for k, v in sorted(self._statuses.items(), key=lambda kv: -kv[1])[:3])
        raise NoScoredSamplesError(
            f"no sample got a parsed reward in {self._unscored_steps} consecutive steps (steps "
            f"{self.step - self._unscored_steps}-{self.step - 1}; statuses: {seen or 'none'}): {_LIKELY_CAUSE}; "
            f"reward.max_unscored_steps=0 disables this check"
        )

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[str, Any]]:
        return [p.detach().clone() for p in self.params], copy.deepcopy(self.optimizer.state_dict())

    @torch.no_grad()
    def _restore(self, snapshot: tuple[list[torch.Tensor], dict[str, Any]]) -> None:
        params, opt_state = snapshot
        for p, saved in zip(self.params, params, strict=True):
            p.copy_(saved)
        self.optimizer.load_state_dict(opt_state)
        self.optimizer.zero_grad(set_to_none=True)

    def _adv_clip(self) -> float:
        return self.cfg.nft.adv_clip if self.cfg.algorithm == "nft" else self.cfg.grpo.adv_clip

    def train(self, progress: bool = True) -> list[StepResult]:
        cfg = self.cfg
        self.maybe_resume()
        self._start_step = self.step
        results: list[StepResult] = []
        from firm.progress import Progress

        with (
            _closing_on_error(self),
            Progress(
                f"rl {cfg.algorithm} {cfg.name}",
                total=cfg.steps,
                completed=self.step,
                enabled=progress and self.rank == 0,
            ) as bar,
        ):
            while self.step < cfg.steps:
                res = self.train_step()
                results.append(res)
                self.metrics.log(res.step, res.metrics)
                done = self.step
                self._check_scoring()
                if cfg.monitor.eval_every and done % cfg.monitor.eval_every == 0:
                    self.eval_grid(done)
                if done % cfg.checkpoint.every_steps == 0 or done == cfg.steps:
                    self.checkpoint()
                if dist.is_initialized():
                    dist.barrier()
                m = res.metrics
                bar.update(
                    completed=done,
                    info=f"reward {m['reward/mean']:.3f}, parse failures {m['reward/parse_failure_rate']:.0%}",
                )
        self.rank_divergence = self._rank_divergence()
        if self.rank == 0:
            export_final(
                self.policy,
                cfg.output_uri,
                lora_mod.adapter_state(self.policy.transformer),
                cfg.checkpoint.export_merged,
            )
        self.metrics.close()
        self._pool.shutdown(wait=True)
        return results

    def _rank_divergence(self) -> float:
        """Max |θ_rank − θ_rank0| over the trainable LoRA (0 when data parallelism kept the ranks in sync)."""
        if self.world == 1:
            return 0.0
        flat = torch.cat([p.detach().reshape(-1).float() for p in self.params])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = (flat - ref).abs().max().reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)


@contextlib.contextmanager
def _closing_on_error(trainer: Trainer) -> Iterator[None]:
    """A failed run still flushes its metrics and stops its reward threads; a run that failed before completing a
    single step (reward service unreachable, …) leaves no run directory behind that it created."""
    try:
        yield
    except BaseException:
        trainer.metrics.close()
        trainer._pool.shutdown(wait=False, cancel_futures=True)
        if trainer.step == trainer._start_step and trainer._new_dirs:
            import shutil

            from firm.storage.base import remove_if_empty

            shutil.rmtree(trainer._new_dirs[-1], ignore_errors=True)  # the run dir: metrics/TensorBoard stubs
            remove_if_empty(trainer._new_dirs)  # and the (output) directories above it, if now empty
        raise


_LIKELY_CAUSE = (
    "the critic's answers do not parse; likely a critic that does not match the task or rubric "
    "(reward.kind/reward.url/reward.critic_uri vs task), an answer cap too short to reach the score "
    "(the critic's max_new_tokens), or a rubric pack the critic was not trained on"
)


def _default_run_dir(cfg: RLConfig) -> Path:
    """Local directory for metrics and sample grids: inside output_uri when it is local, else under FIRM_HOME."""
    out = cfg.output_uri
    if out.startswith("file://"):
        return Path(out.removeprefix("file://")) / "run"
    if "://" not in out:
        return Path(out) / "run"
    from firm.config import get_settings

    return get_settings().home / "runs" / cfg.name / os.environ.get("FIRM_RUN_ID", "default")
