"""Parity with the official trainers (issue 14), each checked against a formula written out here from the official
code: global-std advantages, one accumulated optimizer step per RL step on 1, 2 and 4 gloo ranks, the parameter EMA
that is exported, the dpm2 solver, trained timestep counts, Flow-GRPO's KL and guidance, LoRA targets, and the
parse-failure policies (decided from the status, every failure counted)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from firm.errors import ConfigError
from firm.rl.rewards import BrightnessReward, RewardItem
from firm.schemas import RewardBreakdown

# ----------------------------------------------------------------------------------------------- advantages


def test_global_std_advantages_on_a_fixed_reward_matrix() -> None:
    from firm.rl.advantages import group_advantages

    rewards = [[0.1, 0.4, 0.4, 0.7], [0.5, 0.5, 0.5, 0.5], [0.2, 0.9, 0.3, 0.6]]
    flat = [r for g in rewards for r in g]
    mu = sum(flat) / len(flat)
    std = math.sqrt(sum((r - mu) ** 2 for r in flat) / len(flat))  # population std of the whole step
    want = [(r - sum(g) / len(g)) / (std + 1e-4) for g in rewards for r in g]
    stats = group_advantages(rewards, clip=5.0, std="global")
    assert stats.advantages == pytest.approx(want, abs=1e-12)
    assert stats.zero_std_groups == 1 and stats.advantages[4:8] == [0.0] * 4
    # per-group std (FIRM's earlier behaviour) is still available and differs
    per_group = group_advantages(rewards, clip=5.0, std="group").advantages
    assert per_group[0] == pytest.approx((0.1 - 0.4) / (math.sqrt(0.045) + 1e-4), abs=1e-12)
    assert per_group[0] != pytest.approx(want[0], abs=1e-3)
    # skipped samples take no part; a group left with one reward is dropped and not in the pooled std
    skipped = group_advantages([[0.1, None, 0.7, 0.4], [0.9, None, None, None]], std="global")
    pooled = [0.1, 0.7, 0.4]
    m = sum(pooled) / 3
    s = math.sqrt(sum((r - m) ** 2 for r in pooled) / 3)
    assert skipped.advantages[0] == pytest.approx((0.1 - m) / (s + 1e-4), abs=1e-12)
    assert (
        skipped.advantages[1] is None and skipped.advantages[4:] == [None] * 4 and skipped.dropped_groups == 1
    )


# ----------------------------------------------------------------------------------------------- solver


def _linear_velocity(x: torch.Tensor, sigma: torch.Tensor, cond: object) -> torch.Tensor:
    return 0.3 * x - 0.7 * sigma.reshape(-1, 1) + 0.1


def test_dpm2_rollout_matches_hand_written_second_order_steps() -> None:
    """DPM-Solver++(2M) written out in α/σ ratios (α = 1 − σ): first step and last step first order, every other
    step x' = (σ'/σ)·x + (α' − α·σ'/σ)·(D0 + D1/2), D0 = x̂0, D1 = (x̂0 − x̂0_prev)·h/(λ − λ_prev)."""
    from firm.rl.sampling import ode_rollout

    sigmas = torch.tensor([0.9, 0.75, 0.5, 0.3, 0.12, 0.0])
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    got = ode_rollout(_linear_velocity, x, sigmas, None, solver="dpm2").final  # type: ignore[arg-type]

    def lam(s: float) -> float:
        return math.log((1 - s) / s)

    ref, prev_x0 = x.double(), None
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        x0 = ref - s * _linear_velocity(ref, torch.full((3,), s, dtype=torch.float64), None)
        if t == 0.0:
            ref = x0
        elif i == 0 or prev_x0 is None:
            ref = (t / s) * ref + ((1 - t) - (1 - s) * t / s) * x0
        else:
            h = lam(t) - lam(s)
            d1 = (x0 - prev_x0) * h / (lam(s) - lam(sig[i - 1]))
            ref = (t / s) * ref + ((1 - t) - (1 - s) * t / s) * (x0 + 0.5 * d1)
        prev_x0 = x0
    assert torch.allclose(got.double(), ref, atol=1e-5)
    euler = ode_rollout(_linear_velocity, x, sigmas, None, solver="euler").final  # type: ignore[arg-type]
    assert not torch.allclose(got, euler, atol=1e-3)  # the second-order steps matter
    # the first step is the Euler step; after σ = 1 the second step is first order too (λ(1) = −∞)
    one = torch.tensor([1.0, 0.6, 0.0])
    first = ode_rollout(_linear_velocity, x, one[:2], None, solver="dpm2").final  # type: ignore[arg-type]
    assert torch.allclose(
        first, x + (0.6 - 1.0) * _linear_velocity(x, torch.full((3,), 1.0), None), atol=1e-6
    )


# ----------------------------------------------------------------------------------------------- timesteps


def test_trained_timestep_counts_and_draws() -> None:
    from firm.rl.sampling import train_timestep_count, train_timesteps

    assert [train_timestep_count(t, 0.99) for t in (10, 6, 4, 1)] == [9, 5, 3, 1]  # int(0.99·T), at least 1
    assert train_timestep_count(10, 1.0) == 10 and train_timestep_count(10, 0.5) == 5
    g = torch.Generator().manual_seed(0)
    per = train_timesteps(10, 0.99, "per_sample", 16, g)
    assert per.shape == (16, 9) and all(len(set(row.tolist())) == 9 for row in per)
    assert len({tuple(row.tolist()) for row in per}) > 1  # each sample its own subset / order
    shared = train_timesteps(10, 0.99, "shared", 4, g)
    assert all(torch.equal(row, shared[0]) for row in shared)
    assert train_timesteps(10, 0.99, "first", 2, g).tolist() == [list(range(9))] * 2


# ----------------------------------------------------------------------------------------------- GRPO


def test_grpo_kl_on_known_means_and_std() -> None:
    """Flow-GRPO: mean((μ − μ_ref)²) / (2·std_t²) with std_t = a·√(σ/(1−σ)) — no extra 1/|Δσ| factor."""
    from firm.rl.losses import grpo_loss
    from firm.rl.sampling import sde_step

    mean = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    ref = torch.tensor([[0.5, 0.0], [2.0, 1.0]])
    lp = torch.zeros(2)
    parts, _ = grpo_loss(lp, lp, torch.zeros(2), mean, ref, 0.5, kl_coef=1.0)
    want = ((0.25 + 1.0) / 2 + (0.0 + 1.0) / 2) / 2 / (2 * 0.25)
    assert float(parts.kl) == pytest.approx(want) and float(parts.loss) == pytest.approx(want)
    x, v = torch.zeros(1, 2), torch.zeros(1, 2)
    for s, s_next in ((0.8, 0.7), (0.8, 0.3)):  # the same σ, different step sizes: the same std_t
        st = sde_step(v, x, s, s_next, noise_level=0.7, sigma_max=0.9, generator=torch.Generator())
        assert st.std_t == pytest.approx(0.7 * math.sqrt(0.8 / 0.2))
        assert st.std == pytest.approx(st.std_t * math.sqrt(s - s_next))
    assert sde_step(v, x, 1.0, 0.9, noise_level=0.7, sigma_max=0.9, generator=torch.Generator()).std_t == (
        pytest.approx(0.7 * math.sqrt(1.0 / (1.0 - 0.9)))  # σ = 1: the schedule's second σ in 1 − σ
    )


def test_classifier_free_guidance_combines_both_predictions() -> None:
    from firm.rl.policies.base import Conditioning
    from firm.rl.sampling import guided

    def velocity(x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return x + cond.tensors["c"]

    cond = Conditioning({"c": torch.full((2, 3), 2.0)})
    uncond = Conditioning({"c": torch.zeros(2, 3)})
    x = torch.ones(2, 3)
    out = guided(velocity, uncond, 4.5)(x, torch.ones(2), cond)
    assert torch.allclose(out, 1.0 + 4.5 * 2.0 * torch.ones(2, 3))  # v_u + s·(v_c − v_u)
    assert guided(velocity, uncond, 1.0) is velocity


# ----------------------------------------------------------------------------------------------- LoRA targets


def test_official_lora_targets_skip_the_second_attention_of_dual_blocks(tiny_sd3: Path) -> None:
    from firm.rl import lora
    from firm.rl.config import PolicyConfig
    from firm.rl.policies.loading import load_policy

    pol = load_policy(
        PolicyConfig(kind="sd3", uri=str(tiny_sd3), resolution=32, max_sequence_length=16),
        torch.device("cpu"),
    )
    lora.add_lora(pol.transformer, rank=2, alpha=4, init="gaussian", targets=lora.lora_targets("sd3", None))
    adapted = {n.split(".lora_A")[0] for n, _ in pol.transformer.named_parameters() if "lora_A.default" in n}
    assert "transformer_blocks.0.attn.to_q" in adapted and "transformer_blocks.0.attn.add_q_proj" in adapted
    assert not any(".attn2." in n for n in adapted)
    assert lora.lora_targets("sd3", ["to_q"]) == ["to_q"]  # an explicit list wins


# ----------------------------------------------------------------------------------------------- config


def test_update_and_world_size_checks_name_the_fields(tiny_cfg) -> None:
    from firm.rl.config import check_world_size

    with pytest.raises(ConfigError, match=r"optim\.updates_per_step.*does not divide"):
        tiny_cfg(optim__updates_per_step=3)
    with pytest.raises(ConfigError, match=r"advantages\.std"):
        tiny_cfg(advantages__std="batch")
    with pytest.raises(ConfigError, match=r"sampling\.solver"):
        tiny_cfg(sampling__solver="rk4")
    with pytest.raises(ConfigError, match=r"reward\.parse_failure"):
        tiny_cfg(reward__parse_failure="zero")
    cfg = tiny_cfg(sampling__prompts_per_step=4, optim__updates_per_step=2)
    check_world_size(cfg, 2)
    with pytest.raises(ConfigError, match=r"optim\.updates_per_step=2 does not divide the 1 prompt groups"):
        check_world_size(cfg, 4)


def test_updates_per_step_is_the_optimizer_step_count(tiny_cfg) -> None:
    from firm.rl.trainer import Trainer

    for updates in (1, 2):
        trainer = Trainer(tiny_cfg(steps=1, optim__updates_per_step=updates))
        res = trainer.train_step()
        assert res.metrics["optim/updates"] == updates and trainer.optimizer_steps == updates
        state = trainer.optimizer.state_dict()["state"]
        assert all(int(s["step"]) == updates for s in state.values())
        trainer.metrics.close()


# ----------------------------------------------------------------------------------------------- EMA


def test_exported_lora_is_the_hand_computed_ema(tiny_cfg, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from firm.rl import lora
    from firm.rl.trainer import Trainer

    trainer = Trainer(tiny_cfg(steps=3, optim__lr=2e-2))
    t = trainer.policy.transformer
    names = [n.replace(".default", "") for n, _ in t.named_parameters() if lora._key(n, lora.TRAINABLE)]
    ema = [p.detach().clone() for p in trainer.params]
    step, orig = [0], trainer.optimizer.step

    def step_and_fold(*args, **kwargs):  # the official wrapper, written out: d_k = min(0.9, (1 + k)/(10 + k))
        out = orig(*args, **kwargs)
        step[0] += 1
        d = min(0.9, (1 + step[0]) / (10 + step[0]))
        for e, p in zip(ema, trainer.params, strict=True):
            e.copy_(d * e + (1 - d) * p.detach())
        return out

    trainer.optimizer.step = step_and_fold  # type: ignore[method-assign]
    trainer.train(progress=False)
    assert step[0] == 3
    exported = load_file(str(tmp_path / "out/final/lora/pytorch_lora_weights.safetensors"))
    exported = {k.removeprefix("transformer."): v for k, v in exported.items()}
    raw = dict(zip(names, (p.detach() for p in trainer.params), strict=True))
    assert set(exported) == set(names)
    for name, e in zip(names, ema, strict=True):
        assert torch.allclose(exported[name], e, atol=1e-7), name
    moved = [n for n in names if "lora_B" in n]
    assert any(not torch.allclose(exported[n], raw[n], atol=1e-6) for n in moved)  # not the raw adapter
    with trainer.ema_applied():  # evaluation samples the same weights
        assert all(torch.equal(p.detach(), exported[n]) for n, p in zip(names, trainer.params, strict=True))
    assert all(torch.equal(p.detach(), raw[n]) for n, p in zip(names, trainer.params, strict=True))


# ----------------------------------------------------------------------------------------------- multi-rank


def test_one_step_gives_the_same_lora_on_1_2_and_4_gloo_ranks(tiny_cfg, tmp_path: Path) -> None:
    """The same step's data on 1, 2 and 4 ranks (real torch.distributed gloo, spawned processes): one optimizer step,
    and the same trained LoRA and EMA up to float summation order."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from firm.rl import lora
    from firm.rl.trainer import Trainer
    from tests.rl._dist_worker import main, record_grads

    config = tiny_cfg(
        as_dict=True,
        sampling__prompts_per_step=4,
        sampling__group_size=2,
        sampling__num_steps=2,
        optim__lr=1e-2,
    )
    mp.start_processes(main, args=(config, str(tmp_path)), nprocs=4, join=True, start_method="spawn")
    single = Trainer(tiny_cfg(**{"sampling__prompts_per_step": 4, "sampling__group_size": 2,
                                 "sampling__num_steps": 2, "optim__lr": 1e-2}))  # fmt: skip
    single_grads = record_grads(single)
    single.train_step()
    single.metrics.close()
    one = [p.detach() for p in lora.trainable_params(single.policy.transformer)]
    one_ema = single.ema.state()  # type: ignore[union-attr]
    moved = [p for n, p in single.policy.transformer.named_parameters() if "lora_B.default" in n]
    assert single.optimizer_steps == 1 and any(
        float(p.detach().abs().max()) > 0 for p in moved
    )  # B starts at 0
    for world in (2, 4):
        got = load_file(str(tmp_path / f"world-{world}.safetensors"))
        assert int(got["optimizer_steps"]) == 1, world
        for i, (p, e, g) in enumerate(zip(one, one_ema, single_grads, strict=True)):
            # the step's gradient is one mean over all its samples (Adam alone would hide a wrong scale)
            assert torch.allclose(got[f"grad.{i}"], g, rtol=1e-4, atol=1e-9), (world, i)
            assert torch.allclose(got[f"trained.{i}"], p, atol=1e-6), (world, i)
            assert torch.allclose(got[f"ema.{i}"], e, atol=1e-6), (world, i)


# ----------------------------------------------------------------------------------------------- parse failures


def _edit(e: float | None, c: float | None, status: str) -> RewardBreakdown:
    reward = None if e is None or c is None else e * (0.6 + 0.4 * c)
    return RewardBreakdown(
        task="edit", formulation="cme", reward=reward, status=status, execution=e, consistency=c
    )


def _gen(i: float | None, q: float | None, status: str, quality: bool = True) -> RewardBreakdown:
    raw: dict = {"instruction": None if i is None else 1 + 4 * i}
    if quality:
        raw["quality"] = None if q is None else [3, 3, 3]
    return RewardBreakdown(
        task="gen", formulation="qma" if quality else "instruction", reward=None, status=status,
        instruction=i, quality=q, raw_scores=raw,
    )  # fmt: skip


def test_official_failure_rewards_match_the_official_formulas() -> None:
    """Editing: a failed judgement is a raw 0 → (0 − 1)/4 = −0.25 in E·(0.6 + 0.4·C), clipped to [0, 1].
    Generation ("mix" blend): quality failed → I; instruction failed → 0. Any failed status name counts."""
    from firm.rl.failures import training_reward

    ok = RewardBreakdown(
        task="edit", formulation="cme", reward=0.42, status="ok", execution=0.5, consistency=0.6
    )
    cases = [
        (_edit(None, 0.75, "unparseable:execution"), 0.0),
        (_edit(0.8, None, "unparseable:consistency"), 0.8 * (0.6 + 0.4 * -0.25)),  # = 0.4: not 0
        (_edit(None, None, "unparseable:execution,unparseable:consistency"), 0.0),
        (_edit(0.8, 0.5, "truncated"), 0.0),  # a status this code has never heard of: every axis failed
        (_gen(0.75, None, "unparseable:quality"), 0.75),
        (_gen(None, 0.5, "unparseable:instruction"), 0.0),
        (_gen(0.75, None, "truncated", quality=False), 0.0),
        (ok, 0.42),
    ]
    for b, want in cases:
        assert training_reward(b, "official") == pytest.approx(want), b.status
        assert training_reward(b, "min_reward") == pytest.approx(0.42 if b is ok else 0.0)
        assert training_reward(b, "skip") == (0.42 if b is ok else None)


class HalfFail:
    """Brightness, but every 2nd answer fails with a status this code does not know (reward withheld)."""

    task = "gen"

    def __init__(self) -> None:
        self.inner, self.calls = BrightnessReward(), 0

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        out = self.inner(items)
        for i in range(len(out)):
            self.calls += 1
            if self.calls % 2 == 0:
                out[i] = _gen(0.3, None, "truncated")
        return out


@pytest.mark.parametrize(("policy", "trained"), [("skip", 4.0), ("min_reward", 8.0), ("official", 8.0)])
def test_parse_failures_count_under_every_policy(tiny_cfg, policy: str, trained: float) -> None:
    from firm.rl.trainer import Trainer

    trainer = Trainer(tiny_cfg(steps=1, reward__parse_failure=policy), reward=HalfFail())
    (res,) = trainer.train(progress=False)
    m = res.metrics
    assert m["reward/parse_failure_rate"] == 0.5 and m["reward/n"] == 4.0, m
    assert m["reward/trained"] == trained
    if policy == "official":  # a quality failure trains on the instruction term
        assert m["reward/trained_mean"] == pytest.approx((4 * m["reward/mean"] + 4 * 0.3) / 8)
    if policy == "min_reward":
        assert m["reward/trained_mean"] == pytest.approx(m["reward/mean"] / 2)
