"""One RL trainer loop for both algorithms (DiffusionNFT, Flow-GRPO) and both tasks (edit, gen).

A step: the step's prompts are drawn in a fixed order (a function of seed and step); rank r rolls out the prompt slots
r, r + world, … For each prompt it rolls out a group of K samples (NFT: an ODE solver, `sampling.solver`, with the
old/EMA policy; GRPO: the SDE with log-probs and classifier-free guidance, with the current policy) and hands the
decoded images to the reward (in a background thread when `reward.async_overlap`, so group i is scored while group
i+1 rolls out). Each sample trains on its reward when its status is "ok", else on what `reward.parse_failure` says
(`firm.rl.failures`). Once every rank has its rewards they are shared (`firm.rl.step_rewards`) and every rank computes
the same advantages — the group mean over one std of all rewards of the step, or per group (`advantages.std`);
Flow-GRPO then drops the samples whose advantage is 0, NFT trains them (`firm.rl.advantages.trained_flags`). The
step then makes `optim.updates_per_step` optimizer steps, each on a fixed share of the step's groups, with the
gradients of all those groups on all ranks accumulated into one mean (so the update count and, up to float
rounding, the update itself do not depend on the number of ranks); clipped, AdamW; after each optimizer step the
parameter EMA (`ema`) that checkpoints export and evaluation samples is updated; NFT then moves the old adapter
towards the new weights. While the last rewards are scored the update's no-grad predictions are computed ahead
(`firm.rl.update`). A reward call that fails fails the step on every rank before any weight changes. All randomness
of a step is drawn from generators seeded by (seed, step, prompt slot), so a resumed run repeats exactly the steps an
uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import json
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

from firm.errors import FirmError
from firm.rl import lora as lora_mod
from firm.rl.advantages import trained_flags
from firm.rl.alarms import Alarm, Alarms, AlarmStop
from firm.rl.audit import AuditResult, FlaggedSample, gallery_html, load_audit_set, run_audit, thumb_tensor
from firm.rl.checkpoint import (
    Loaded,
    check_fresh_output,
    export_final,
    find_resume,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from firm.rl.confidence import apply_low_confidence
from firm.rl.config import RLConfig, check_world_size
from firm.rl.data import PromptItem, load_prompts, load_source, step_prompts
from firm.rl.ema import ParamEMA
from firm.rl.failures import training_reward
from firm.rl.monitor import IdentityCopyFlag, MetricLogger, detail, entropy, source_similarity
from firm.rl.policies.base import Conditioning, DiffusionPolicy
from firm.rl.policies.loading import load_policy, pick_device
from firm.rl.rewards import RewardFunction, RewardItem, build_reward, is_scored, with_retries
from firm.rl.sampling import guided, ode_rollout, sde_rollout
from firm.rl.step_rewards import StepRewards, share, slot_of, update_of
from firm.rl.update import Batch, StepUpdate
from firm.schemas import RewardBreakdown

log = logging.getLogger(__name__)

SUB_SCORES = ("execution", "consistency", "instruction", "quality")
LOW_CONFIDENCE_SAVED = 4  # least confident samples' rationales saved per step (and rank)
EDIT_EVAL_ITEMS = 4  # editing eval grids: the first 4 (instruction, source) items of the prompt file
WARN_AFTER_STEPS = 2  # reward.warn_parse_failure_rate: consecutive steps above it before the first warning
WARN_EVERY_STEPS = 10  # … and how often the warning repeats while it lasts


class NoScoredSamplesError(FirmError):
    """Several steps in a row without a single parsed reward: the run cannot learn anything."""


@dataclass
class Group:
    """One prompt's K rollouts."""

    prompt: str
    batch: Batch  # slot, conditioning, latents (and GRPO trajectory) for the update
    images: torch.Tensor  # [K, 3, H, W]
    source: torch.Tensor | None
    rewards: list[RewardBreakdown] = field(default_factory=list)
    pending: Future[list[RewardBreakdown]] | None = None  # async: the reward call still in flight
    adv_weights: list[float] | None = None  # reward.low_confidence=discount: advantage multipliers
    low_confidence: list[bool] = field(default_factory=list)  # flagged by reward.low_confidence


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
        check_world_size(cfg, self.world)
        self.device = pick_device(cfg.device)
        self.prompts: list[PromptItem] = load_prompts(cfg.data.prompts, cfg.task, cfg.data.max_prompt_chars)
        self.policy = policy or load_policy(cfg.policy, self.device)
        lc = cfg.lora
        torch.manual_seed(cfg.seed)  # the same LoRA init on every rank …
        lora_mod.add_lora(
            self.policy.transformer,
            rank=lc.rank,
            alpha=lc.alpha,
            init=lc.init,
            targets=lora_mod.lora_targets(cfg.policy.kind, lc.target_modules),
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
        ec = cfg.ema
        self.ema = (
            ParamEMA(self.params, ec.decay, warmup=ec.warmup, update_every=ec.update_every)
            if ec.enabled
            else None
        )
        self.optimizer_steps = 0  # over the whole run: the EMA schedules count these
        self.reward = reward or build_reward(cfg.reward, cfg.task)
        self.run_dir = Path(run_dir) if run_dir else _default_run_dir(cfg)
        from firm.storage.base import missing_dirs

        self._new_dirs = missing_dirs(self.run_dir)  # what a failed start must remove again
        self.metrics = MetricLogger(self.run_dir, tensorboard=cfg.monitor.tensorboard, enabled=self.rank == 0)
        self.identity_flag = IdentityCopyFlag()
        ac = cfg.audit
        self.alarms = Alarms(ac, cfg.task)
        # the audit set is read and scored on rank 0; the other ranks receive its numbers
        self.audit_set = (
            load_audit_set(ac.bench, cfg.task, ac.max_items) if ac.bench and self.rank == 0 else None
        )
        self.last_audit: dict[str, float] = {}
        # audit.alarm=stop: the newest state whose rollouts met no alarm condition
        self._good: Loaded | None = None
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
        self._restore(ck)
        self.metrics.truncate_after(ck.step)
        log.info("resumed from %s at step %d", uri, ck.step)
        return uri

    def _restore(self, ck: Loaded) -> None:
        t = self.policy.transformer
        if self.ema is not None:  # the exported LoRA of a checkpoint is the EMA
            lora_mod.load_adapter_state(t, ck.lora, lora_mod.TRAINABLE)
            self.ema.load([p.detach() for p in self.params])
        lora_mod.load_adapter_state(t, ck.trainable, lora_mod.TRAINABLE)
        lora_mod.load_adapter_state(t, ck.old_lora, lora_mod.OLD)
        self.optimizer.load_state_dict(ck.trainer_state["optimizer"])
        set_rng_state(ck.trainer_state["rng"])
        self.step = ck.step
        self.optimizer_steps = int(ck.trainer_state.get("optimizer_steps", ck.step))

    def _snapshot(self) -> Loaded:
        """The state a checkpoint of the current step would hold, in memory (cloned)."""
        import copy

        t = self.policy.transformer

        def cloned(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().clone() for k, v in d.items()}

        state = {
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": rng_state(),
            "optimizer_steps": self.optimizer_steps,
        }
        return Loaded(
            self.step,
            cloned(self.export_state()),
            cloned(lora_mod.adapter_state(t, lora_mod.TRAINABLE)),
            cloned(lora_mod.adapter_state(t, lora_mod.OLD)),
            state,
            "memory",
        )

    def export_state(self) -> dict[str, torch.Tensor]:
        """The LoRA that checkpoints export and evaluation uses: the EMA when enabled, else the trained adapter."""
        with self.ema_applied():
            return lora_mod.adapter_state(self.policy.transformer)

    @contextlib.contextmanager
    def ema_applied(self) -> Iterator[None]:
        """Inside the block the trainable adapter holds the EMA weights (a no-op without EMA)."""
        if self.ema is None:
            yield
            return
        with self.ema.applied(self.params):
            yield

    def checkpoint(self) -> str | None:
        if self.rank != 0:
            return None
        t = self.policy.transformer
        return save_checkpoint(
            self.policy,
            self.cfg.output_uri,
            self.step,
            self.export_state(),
            lora_mod.adapter_state(t, lora_mod.TRAINABLE),
            lora_mod.adapter_state(t, lora_mod.OLD),
            self.optimizer,
            {
                "algorithm": self.cfg.algorithm,
                "task": self.cfg.task,
                "optimizer_steps": self.optimizer_steps,
                "rubrics": getattr(self.reward, "rubrics", None),  # the pack the critic was asked with
                "config": self.cfg.model_dump(mode="json"),
            },
            extra_files=[self.metrics.path, self.run_dir / "gallery.html"],
        )

    # ---------------------------------------------------------------- rollouts
    def _source(self, item: PromptItem) -> torch.Tensor | None:
        if item.source is None:
            return None
        if item.source not in self._sources:
            self._sources[item.source] = load_source(item.source, self.policy.resolution)
        return self._sources[item.source]

    def _guidance(self) -> float:
        return self.cfg.grpo.guidance_scale if self.cfg.algorithm == "grpo" else 1.0

    def _uncond(self, source: torch.Tensor | None, k: int) -> Conditioning | None:
        """The unconditional (empty prompt) conditioning for classifier-free guidance, or None without it."""
        if self._guidance() == 1.0:
            return None
        return self.policy.encode([""], [source] if source is not None else None).repeat(k)

    def _rollout_group(self, item: PromptItem, step: int, slot: int) -> Group:
        cfg, pol = self.cfg, self.policy
        k = cfg.sampling.group_size
        source = self._source(item)
        cond = pol.encode([item.prompt], [source] if source is not None else None).repeat(k)
        uncond = self._uncond(source, k)
        g = _gen(cfg.seed, step, slot, 1)
        noise = pol.initial_noise(k, g, cond)
        sigmas = pol.sigmas(cfg.sampling.num_steps, cond)
        if cfg.algorithm == "nft":
            adapter = lora_mod.OLD if cfg.sampling.rollout_policy == "old" else lora_mod.TRAINABLE
            with lora_mod.using(pol.transformer, adapter):
                traj = ode_rollout(pol.velocity, noise, sigmas, cond, solver=cfg.sampling.solver)
        else:
            velocity = pol.velocity if uncond is None else guided(pol.velocity, uncond, self._guidance())
            traj = sde_rollout(velocity, noise, sigmas, cond, noise_level=cfg.grpo.noise_level, generator=g)
        images = pol.decode(traj.final, cond)
        batch = Batch(slot, cond, uncond, traj.final, traj.states, traj.log_probs)
        return Group(item.prompt, batch, images, source)

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
            grp = self._rollout_group(self.prompts[pi], step, slot_of(self.rank, self.world, gi))
            t_roll += time.perf_counter() - t0
            groups.append(grp)
            if self.cfg.reward.async_overlap:  # scored while the next group rolls out
                grp.pending = self._pool.submit(self._score, grp)
            else:
                t0 = time.perf_counter()
                grp.rewards = self._score(grp)
                t_wait += time.perf_counter() - t0
        return groups, {"time/rollout": t_roll, "time/reward_wait": t_wait}

    def _await_rewards(
        self, groups: list[Group], upd: StepUpdate, times: dict[str, float]
    ) -> BaseException | None:
        """Wait for every async reward call, computing the update's no-grad predictions while any is pending; only
        the time blocked with nothing left to compute counts as reward wait. Returns a reward failure, if any."""
        waiting = 0.0
        try:
            for grp in groups:
                if grp.pending is None:
                    continue
                while not grp.pending.done() and upd.precompute_next():
                    pass
                t0 = time.perf_counter()
                try:
                    grp.rewards = grp.pending.result()
                finally:
                    waiting += time.perf_counter() - t0
                    grp.pending = None
        except Exception as exc:  # RewardServiceError after retries, or a caller error: every rank must know
            return exc
        finally:
            times["time/reward_wait"] = times.get("time/reward_wait", 0.0) + waiting
        return None

    def _share_rewards(self, groups: list[Group], failed: BaseException | None) -> StepRewards:
        rc = self.cfg.reward
        policy = rc.parse_failure
        train = [[training_reward(b, policy) for b in g.rewards] for g in groups] if failed is None else []
        if failed is None:  # reward.low_confidence, per group, before the advantages
            for gi, g in enumerate(groups):
                conf = [b.confidence.p if b.confidence is not None else None for b in g.rewards]
                plan = apply_low_confidence(
                    train[gi], conf, rc.low_confidence, rc.confidence_threshold, rc.confidence_coverage
                )
                train[gi], g.adv_weights, g.low_confidence = plan.train, plan.weights, plan.flagged
        parsed = [[is_scored(b) for b in g.rewards] for g in groups] if failed is None else []
        if failed is not None:  # the shape still has to match the other ranks'
            k = self.cfg.sampling.group_size
            train, parsed = [[None] * k for _ in groups], [[False] * k for _ in groups]
        return share(train, parsed, failed, self.rank, self.world)

    # ---------------------------------------------------------------- update
    def _optimizer_step(self, n_trained: int) -> float | None:
        """Sum the update's gradients over ranks (each rank's loss is already divided by the update's global count),
        clip, step, update the EMA. No trained sample on any rank → no step: AdamW's momentum and weight decay must
        not move the weights on nothing."""
        if n_trained == 0:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.world > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in self.params])  # type: ignore[union-attr]
            dist.all_reduce(flat)
            off = 0
            for p in self.params:
                n = p.numel()
                p.grad = flat[off : off + n].view_as(p).clone()
                off += n
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        if self.ema is not None:
            self.ema.update(self.params, self.optimizer_steps)
        return float(norm)

    def update(
        self, groups: list[Group], shared: StepRewards, upd: StepUpdate, stats: Any
    ) -> dict[str, float]:
        """`optim.updates_per_step` optimizer steps, each accumulating its share of the step's groups."""
        updates = self.cfg.optim.updates_per_step
        per_rank = len(groups)
        adv = stats.advantages
        k = self.cfg.sampling.group_size
        # Flow-GRPO drops the samples with A = 0, NFT trains them
        trains = trained_flags(adv, drop_zero=self.cfg.algorithm == "grpo")
        trained = [trains[s * k : (s + 1) * k] for s in range(len(shared.train))]
        n_update = [0] * updates
        for s, flags in enumerate(trained):
            n_update[update_of(s // self.world, per_rank, updates)] += sum(flags)
        epochs = self.cfg.grpo.inner_epochs if self.cfg.algorithm == "grpo" else 1
        sums: dict[str, float] = {}
        norms: list[float] = []
        for epoch in range(epochs):
            for u in range(updates):
                for gi, grp in enumerate(groups):
                    slot = grp.batch.slot
                    if update_of(gi, per_rank, updates) != u or not any(trained[slot]):
                        continue
                    a = torch.tensor([x if x is not None else 0.0 for x in adv[slot * k : (slot + 1) * k]])
                    if grp.adv_weights is not None:
                        a = a * torch.tensor(grp.adv_weights, dtype=a.dtype)
                    w = torch.tensor([1.0 / n_update[u] if f else 0.0 for f in trained[slot]])
                    for key, val in upd.backward(grp.batch, a, w, epoch).items():
                        sums[key] = sums.get(key, 0.0) + val
                norm = self._optimizer_step(n_update[u])
                if norm is not None:
                    norms.append(norm)
        for grp in groups:
            upd.release(grp.batch)
        count = max(sums.pop("count", 0.0), 1.0)
        out = {key: val / count for key, val in sums.items()}
        out.setdefault("loss/policy", 0.0)
        out.setdefault("loss/kl", 0.0)
        if self.cfg.algorithm == "grpo":
            out.setdefault("clip_frac", 0.0)
        out["grad_norm"] = sum(norms) / len(norms) if norms else 0.0
        out["optim/updates"] = float(len(norms))
        out["optim/trained_samples"] = float(sum(n_update))
        if self.cfg.algorithm == "nft":
            nc = self.cfg.nft
            decay = lora_mod.ema_decay(self.optimizer_steps, nc.ema_max_decay, nc.ema_ramp)
            lora_mod.ema_update(self.policy.transformer, decay)
            out["ema_decay"] = decay
        return out

    # ---------------------------------------------------------------- metrics
    def _reward_metrics(self, groups: list[Group], shared: StepRewards, stats: Any) -> dict[str, float]:
        """Reward statistics of the whole step: from the shared rewards, plus sub-scores and reward-hacking
        monitors summed over ranks (all-reduced as one float64 vector)."""
        parsed = shared.parsed_rewards
        total = sum(len(p) for p in shared.parsed)
        trained = [r for rs in shared.train for r in rs if r is not None]
        n = max(len(parsed), 1)
        mean = sum(parsed) / n
        m: dict[str, float] = {
            "reward/mean": mean,
            "reward/n": float(len(parsed)),
            "reward/std": math.sqrt(max(sum(r * r for r in parsed) / n - mean * mean, 0.0)),
            "reward/parse_failure_rate": (total - len(parsed)) / max(total, 1),
            "reward/trained": float(sum(a is not None for a in stats.advantages)),
            "reward/trained_mean": sum(trained) / max(len(trained), 1),
            "groups/zero_std_ratio": stats.zero_std_groups / max(stats.groups, 1),
            "groups/dropped": float(stats.dropped_groups),
        }
        vec: list[float] = []
        for name in SUB_SCORES:
            vals = [getattr(b, name) for g in groups for b in g.rewards if getattr(b, name) is not None]
            vec += [float(sum(vals)), float(len(vals))]
        images = torch.cat([g.images for g in groups])
        if self.cfg.task == "edit":
            srcs = torch.cat([g.source.unsqueeze(0).expand(len(g.images), -1, -1, -1) for g in groups])  # type: ignore[union-attr]
            sims = source_similarity(images, srcs)
            vec += [float(sims.sum()), float(self._identity_copies(groups, sims).sum())]
        else:
            vec += [float(detail(images).sum()), float(entropy(images).sum())]
        confs = [b.confidence.p for g in groups for b in g.rewards if b.confidence is not None]
        vec += [float(sum(confs)), float(len(confs)), float(sum(sum(g.low_confidence) for g in groups))]
        # answers cut at the critic's token budget, counted apart from other parse failures
        vec.append(float(sum("truncated" in b.status for g in groups for b in g.rewards)))
        vec.append(float(images.shape[0]))
        t = torch.tensor(vec, dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(t)
        v = t.tolist()
        off = 0
        for name in SUB_SCORES:
            if v[off + 1] > 0:
                m[f"reward/{name}"] = v[off] / v[off + 1]
            off += 2
        n_img = max(v[-1], 1.0)
        if self.cfg.task == "edit":
            m["hacking/source_similarity"] = v[off] / n_img
            m["hacking/identity_rate"] = v[off + 1] / n_img
        else:
            m["hacking/detail"] = v[off] / n_img
            m["hacking/entropy"] = v[off + 1] / n_img
        m["reward/truncated_rate"] = v[-2] / n_img
        conf_sum, conf_n, flagged = v[-5], v[-4], v[-3]
        if conf_n > 0:
            m["reward/confidence_mean"] = conf_sum / conf_n
        m["reward/dropped_low_confidence"] = flagged
        return m

    def _identity_copies(self, groups: list[Group], sims: torch.Tensor) -> torch.Tensor:
        """Per sample (in `groups` order): an identity copy the critic rewarded (`audit.identity_*`)."""
        ac = self.cfg.audit
        rewarded = torch.tensor(
            [is_scored(b) and float(b.reward) >= ac.identity_reward for g in groups for b in g.rewards]  # type: ignore[arg-type]
        )
        return (sims >= ac.identity_similarity) & rewarded

    def _save_low_confidence(
        self, step: int, groups: list[Group], k: int = LOW_CONFIDENCE_SAVED
    ) -> Path | None:
        """The `k` least confident samples of this rank's groups — prompt, reward, confidence, status and the
        critic's rationale per axis — next to the step's sample grid (`samples/step-N.low_confidence.json`)."""
        rows = [
            (b.confidence.p, g.prompt, j, b)
            for g in groups
            for j, b in enumerate(g.rewards)
            if b.confidence is not None
        ]
        if not rows:
            return None
        rows.sort(key=lambda r: r[0])
        doc = [
            {
                "prompt": prompt,
                "sample": j,
                "reward": b.reward,
                "status": b.status,
                "confidence": b.confidence.model_dump(mode="json") if b.confidence is not None else None,
                "reasoning": b.reasoning,
            }
            for _, prompt, j, b in rows[:k]
        ]
        suffix = f".rank-{self.rank}" if self.world > 1 else ""
        out = self.run_dir / "samples" / f"step-{step:08d}.low_confidence{suffix}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        return out

    @torch.no_grad()
    def eval_grid(self, step: int) -> Path | None:
        """A sample grid of the fixed eval prompts with the exported (EMA) LoRA: the Euler ODE sampler, with the
        training's guidance."""
        prompts = self.cfg.data.eval_prompts
        if self.rank != 0 or (self.cfg.task == "gen" and not prompts):
            return None
        # editing needs source images: the fixed eval set is the first items of the prompt file
        items = [PromptItem(p) for p in prompts] if self.cfg.task == "gen" else self.prompts[:EDIT_EVAL_ITEMS]
        imgs = []
        with self.ema_applied():
            for i, it in enumerate(items):
                source = self._source(it)
                cond = self.policy.encode([it.prompt], [source] if source is not None else None)
                uncond = self._uncond(source, 1)
                velocity = (
                    self.policy.velocity
                    if uncond is None
                    else guided(self.policy.velocity, uncond, self._guidance())
                )
                noise = self.policy.initial_noise(1, _gen(self.cfg.seed, 7919, i), cond)
                sigmas = self.policy.sigmas(self.cfg.sampling.eval_num_steps, cond)
                traj = ode_rollout(velocity, noise, sigmas, cond)
                imgs.append(self.policy.decode(traj.final, cond))
        out = self.run_dir / "samples" / f"step-{step:08d}.png"
        self.metrics.image_grid(step, torch.cat(imgs), out)
        return out

    # ---------------------------------------------------------------- loop
    def _adv_clip(self) -> float:
        return self.cfg.nft.adv_clip if self.cfg.algorithm == "nft" else self.cfg.grpo.adv_clip

    def train_step(self) -> StepResult:
        step = self.step
        t0 = time.perf_counter()
        groups, times = self.collect(step)
        t1, wait0 = time.perf_counter(), times["time/reward_wait"]
        sigmas = self.policy.sigmas(self.cfg.sampling.num_steps, groups[0].batch.cond)
        upd = StepUpdate(self.cfg, self.policy, step, sigmas, _gen)
        upd.batches = [g.batch for g in groups]
        failed = self._await_rewards(groups, upd, times)
        shared = self._share_rewards(groups, failed)  # raises on every rank if any rank's reward calls failed
        stats = shared.advantages(self._adv_clip(), self.cfg.advantages.std)
        if stats.dropped_samples:
            log.warning("step %d: dropped %d samples whose reward did not parse", step, stats.dropped_samples)
        out = self.update(groups, shared, upd, stats)
        times["time/update"] = time.perf_counter() - t1 - (times["time/reward_wait"] - wait0)
        times["time/step"] = time.perf_counter() - t0
        metrics = {**self._reward_metrics(groups, shared, stats), **out, **times}
        self._save_low_confidence(step, groups)
        # what the alarms' gallery shows of the step
        self._last_groups = [(g.prompt, g.images, g.source, g.rewards) for g in groups]
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
            stop_mode = cfg.audit.alarm == "stop"
            while self.step < cfg.steps:
                before = self._snapshot() if stop_mode else None
                if self._good is None:
                    self._good = before  # the run's starting state is good by definition
                res = self.train_step()
                results.append(res)
                fired, audit = self._watch(res)
                self.metrics.log(res.step, res.metrics)
                if fired or audit is not None:
                    self._gallery(res.step, audit, res.metrics, fired)
                if fired and stop_mode:
                    self._stop(fired[0])
                if before is not None and not self.alarms.condition:
                    self._good = before  # this state's rollouts met no alarm condition
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
            export_final(self.policy, cfg.output_uri, self.export_state(), cfg.checkpoint.export_merged)
        self.metrics.close()
        self._pool.shutdown(wait=True)
        return results

    # ---------------------------------------------------------------- audit and alarms
    def audit(self, step: int) -> tuple[dict[str, float], AuditResult | None]:
        """Score the audit set through the run's own reward on rank 0; every rank gets its numbers (and its
        failure: a reward service down after the retries fails the run on every rank)."""
        ac, rc = self.cfg.audit, self.cfg.reward
        keys = ("audit/mae", "audit/parse_failure_rate", "audit/confidence_mean", "audit/n", "time/audit")
        vec = torch.full((len(keys) + 1,), math.nan, dtype=torch.float64)
        result: AuditResult | None = None
        failure: BaseException | None = None
        if self.rank == 0 and self.audit_set is not None:
            try:
                result = run_audit(self.reward, self.audit_set, step, retries=rc.retries,
                                   backoff_s=rc.retry_backoff_s, thumbs=ac.gallery_items)  # fmt: skip
                m = result.metrics()
                vec = torch.tensor([*(m[k] for k in keys), 0.0], dtype=torch.float64)
            except Exception as exc:
                failure, vec[-1] = exc, 1.0
        if self.world > 1:
            dist.broadcast(vec, src=0)
        if failure is not None:
            raise failure
        if vec[-1] > 0:
            raise FirmError(f"the audit after step {step} failed on rank 0: the run stops on every rank")
        out = {k: float(v) for k, v in zip(keys, vec.tolist(), strict=False) if math.isfinite(float(v))}
        self.last_audit = out
        return out, result

    def _watch(self, res: StepResult) -> tuple[list[Alarm], AuditResult | None]:
        """The step's alarms, and the audit when one is due (its numbers join the step's metrics)."""
        fired = self.alarms.check_step(res.step, res.metrics)
        done, ac = self.step, self.cfg.audit
        audit = None
        if ac.bench and (done % ac.every_steps == 0 or done == self.cfg.steps):
            numbers, audit = self.audit(res.step)
            res.metrics.update(numbers)
            fired += self.alarms.check_audit(res.step, numbers)
        res.metrics["alarms/fired"] = float(len(fired))
        if self.rank == 0:
            for a in fired:
                log.warning("%s (audit.alarm=%s)", a.line(), ac.alarm)
        return fired, audit

    def _flag_samples(self, step: int, alarms: list[Alarm], k: int = 4) -> list[FlaggedSample]:
        """Rank 0's samples of this step that the fired alarms point at (`k` per alarm)."""
        ac = self.cfg.audit
        out: list[FlaggedSample] = []
        rows = [
            (p, img, src, b)
            for p, imgs, src, bs in getattr(self, "_last_groups", [])
            for img, b in zip(imgs, bs, strict=True)
        ]
        for a in alarms:
            picked: list[tuple[str, torch.Tensor, torch.Tensor | None, RewardBreakdown, str]] = []
            if a.name == "identity_copies":
                scored = []
                for p, img, src, b in rows:
                    sim = float(source_similarity(img[None], src[None])[0]) if src is not None else 0.0
                    ok = is_scored(b) and float(b.reward) >= ac.identity_reward  # type: ignore[arg-type]
                    if sim >= ac.identity_similarity and ok:
                        scored.append((sim, p, img, src, b))
                picked = [
                    (p, img, src, b, f"similarity to the source {sim:.3f}")
                    for sim, p, img, src, b in sorted(scored, key=lambda r: -r[0])
                ]
            elif a.name == "parse_failures":
                picked = [(p, img, src, b, "") for p, img, src, b in rows if not is_scored(b)]
            elif a.name == "zero_variance":
                picked = [(p, img, src, b, "its group's rewards are all equal") for p, img, src, b in rows]
            elif a.name == "subscore_collapse":
                sub = str(a.evidence.get("sub_score"))
                vals = [(getattr(b, sub, None), p, img, src, b) for p, img, src, b in rows]
                picked = [
                    (p, img, src, b, f"{sub} {v:.3f}")
                    for v, p, img, src, b in sorted((x for x in vals if x[0] is not None), key=lambda r: r[0])
                ]
            for p, img, src, b, note in picked[:k]:
                out.append(
                    FlaggedSample(
                        a.name,
                        step,
                        p,
                        b,
                        thumb_tensor(img),
                        thumb_tensor(src) if src is not None else None,
                        note,
                    )
                )
        return out

    def _gallery(
        self, step: int, audit: AuditResult | None, metrics: dict[str, Any], fired: list[Alarm]
    ) -> None:
        """The rationale gallery (`gallery.html` in the run directory and under `<output_uri>/audit/`): the newest
        audit, every alarm so far and the samples they flagged."""
        if self.rank != 0:
            return
        self._flagged = [*getattr(self, "_flagged", []), *self._flag_samples(step, fired)][-24:]
        if audit is not None:
            self._last_audit_result = audit
        page = gallery_html(
            f"RL audit — {self.cfg.name}", step, getattr(self, "_last_audit_result", None),
            {**metrics, **self.last_audit}, self.alarms.fired, self._flagged,
        )  # fmt: skip
        d = self.run_dir / "audit"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"step-{step:08d}.html").write_text(page)
        (self.run_dir / "gallery.html").write_text(page)
        from firm.storage import write_bytes

        write_bytes(f"{self.cfg.output_uri.rstrip('/')}/audit/gallery.html", page.encode())

    def _stop(self, alarm: Alarm) -> None:
        """`audit.alarm=stop`: publish the last good state as a checkpoint, record the alarm, raise `AlarmStop`."""
        from firm.rl.alarms import STOPPED_BY_ALARM
        from firm.rl.checkpoint import step_uri
        from firm.storage import is_published, write_bytes

        uri = None
        good = self._good
        if good is not None:
            self._restore(good)
            uri = step_uri(self.cfg.output_uri, good.step)
            if self.rank == 0 and not is_published(uri):
                self.checkpoint()
        if self.rank == 0:
            doc = {"status": STOPPED_BY_ALARM, "alarm": alarm.to_json(), "checkpoint": uri,
                   "alarms": [a.to_json() for a in self.alarms.fired]}  # fmt: skip
            text = json.dumps(doc, indent=1, default=str) + "\n"
            (self.run_dir / "alarm.json").write_text(text)
            write_bytes(f"{self.cfg.output_uri.rstrip('/')}/alarm.json", text.encode())
        if dist.is_initialized():
            dist.barrier()
        raise AlarmStop(alarm, uri)

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
    except BaseException as exc:
        trainer.metrics.close()
        trainer._pool.shutdown(wait=False, cancel_futures=True)
        # a run stopped by an alarm keeps what it wrote (its good checkpoint may be its starting state)
        if trainer.step == trainer._start_step and trainer._new_dirs and not isinstance(exc, AlarmStop):
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
