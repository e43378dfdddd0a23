"""Learning tests: on the tiny SD3 policy, NFT and GRPO raise a cheap known reward (image brightness) that flows
through the reward interface; unparseable samples are dropped; a failing reward service fails the step clearly."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from firm.rl.rewards import BrightnessReward, RewardItem, RewardServiceError
from firm.schemas import RewardBreakdown


@torch.no_grad()
def _eval_brightness(trainer, n: int = 32) -> float:
    """Mean brightness of the current policy's samples (its own sampler: ODE for NFT, SDE for GRPO) on fixed noise,
    independent of the training noise."""
    from firm.rl.sampling import ode_rollout, sde_rollout

    pol = trainer.policy
    cond = pol.encode(["a red apple on a table", "a dark street at night"]).repeat(n // 2)
    g = torch.Generator().manual_seed(1234)
    noise = pol.initial_noise(n, g, cond)
    sig = pol.sigmas(4, cond)
    if trainer.cfg.algorithm == "grpo":
        traj = sde_rollout(
            pol.velocity, noise, sig, cond, noise_level=trainer.cfg.grpo.noise_level, generator=g
        )
    else:
        traj = ode_rollout(pol.velocity, noise, sig, cond)
    return float(pol.decode(traj.final, cond).mean())


@pytest.mark.parametrize(
    ("algorithm", "steps", "overrides"),
    [
        ("nft", 16, {"optim__lr": 1e-2}),
        # SDE rollouts are noisier: larger groups. 10 steps of 2 prompts × 8 raise the mean reward by 0.089 and the
        # held-out brightness by 0.12, six times the bars below (measured; 20 steps of 4 prompts took 32 s, this 5 s)
        (
            "grpo",
            10,
            {
                "optim__lr": 2e-2,
                "grpo__kl_coef": 0.0,
                "sampling__group_size": 8,
                "sampling__prompts_per_step": 2,
            },
        ),
    ],
)
def test_mean_reward_rises(tiny_cfg, algorithm: str, steps: int, overrides: dict) -> None:
    from firm.rl.trainer import Trainer

    cfg = tiny_cfg(algorithm, steps=steps, **overrides)
    trainer = Trainer(cfg)
    before = _eval_brightness(trainer)
    results = trainer.train(progress=False)
    after = _eval_brightness(trainer)
    rewards = [r.metrics["reward/mean"] for r in results]
    assert len(rewards) == steps
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.015, rewards
    assert after > before + 0.02, (before, after)
    m = results[-1].metrics
    for key in (
        "reward/std",
        "groups/zero_std_ratio",
        "loss/kl",
        "hacking/detail",
        "hacking/entropy",
        "time/rollout",
        "time/reward_wait",
        "time/update",
    ):
        assert key in m
    assert m["reward/parse_failure_rate"] == 0.0


def test_grpo_kl_to_the_reference_grows_once_the_lora_moves(tiny_cfg) -> None:
    from firm.rl.trainer import Trainer

    cfg = tiny_cfg("grpo", steps=2, grpo__kl_coef=0.04, sampling__prompts_per_step=1)  # one update per step
    results = Trainer(cfg).train(progress=False)
    # step 0: the LoRA is still the identity (B = 0), so the policy is the reference; after one update it is not
    assert results[0].metrics["loss/kl"] == 0.0 and results[1].metrics["loss/kl"] > 0.0
    assert results[1].metrics["clip_frac"] == 0.0  # one update per rollout batch: ratio is exactly 1


class FlakyCritic:
    """Brightness, but every 3rd answer "did not parse" (reward None), like a critic with a garbled output."""

    task = "gen"

    def __init__(self) -> None:
        self.inner = BrightnessReward()
        self.calls = 0

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        out = self.inner(items)
        for i in range(len(out)):
            self.calls += 1
            if self.calls % 3 == 0:
                out[i] = RewardBreakdown(
                    task="gen", formulation="qma", reward=None, status="unparseable:instruction"
                )
        return out


def test_unparseable_samples_are_dropped_and_reported(tiny_cfg) -> None:
    from firm.rl.trainer import Trainer

    trainer = Trainer(tiny_cfg(steps=2, reward__async_overlap=True), reward=FlakyCritic())
    results = trainer.train(progress=False)
    # 8 samples per step, every 3rd answer overall unparseable: items 3, 6 in step 0 and 9, 12, 15 in step 1
    rates = [r.metrics["reward/parse_failure_rate"] for r in results]
    assert rates == [pytest.approx(2 / 8), pytest.approx(3 / 8)]
    assert all(r.metrics["reward/mean"] > 0 for r in results)  # the mean is over scored samples only


class DownService:
    task = "gen"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        self.calls += 1
        raise ConnectionError("failed to connect to all addresses; 127.0.0.1:1")


@pytest.mark.parametrize("overlap", [False, True])
def test_reward_service_down_fails_the_step_after_retries(tiny_cfg, overlap: bool) -> None:
    from firm.rl import lora
    from firm.rl.trainer import Trainer

    svc = DownService()
    trainer = Trainer(tiny_cfg(steps=1, reward__retries=2, reward__async_overlap=overlap), reward=svc)
    before = [p.detach().clone() for p in lora.trainable_params(trainer.policy.transformer)]
    with pytest.raises(RewardServiceError, match=r"failed after 3 attempts.*127\.0\.0\.1:1"):
        trainer.train(progress=False)
    assert svc.calls >= 3
    after = lora.trainable_params(trainer.policy.transformer)
    assert all(
        torch.equal(a, b) for a, b in zip(after, before, strict=True)
    )  # nothing trained on fabricated rewards
    assert trainer.step == 0
    assert not trainer.run_dir.exists()  # a failed start leaves no run directory behind
    assert not (trainer.run_dir.parent).exists()  # nor the output directory it created


class FailsOnPrompt:
    """Brightness, but the reward service errors for one prompt (a later group of the step)."""

    task = "gen"

    def __init__(self, bad_prompt: str) -> None:
        self.bad_prompt, self.inner = bad_prompt, BrightnessReward()

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        if any(it.prompt == self.bad_prompt for it in items):
            raise RuntimeError("reward service: INTERNAL: backend crashed")
        return self.inner(items)


def test_async_reward_failure_leaves_weights_and_optimizer_untouched(tiny_cfg) -> None:
    """Group 1's reward fails after group 0's was scored (and while the update's no-grad predictions were being
    computed ahead): the failed step must leave the LoRA and the optimizer exactly as they were."""
    from firm.rl import lora
    from firm.rl.data import step_prompts
    from firm.rl.trainer import Trainer

    cfg = tiny_cfg(steps=1, reward__async_overlap=True, reward__retries=1)
    trainer = Trainer(cfg, reward=FailsOnPrompt("placeholder"))
    second = step_prompts(len(trainer.prompts), 0, cfg.seed, cfg.sampling.prompts_per_step, 0, 1)[1]
    trainer.reward = FailsOnPrompt(trainer.prompts[second].prompt)
    before = [p.detach().clone() for p in lora.trainable_params(trainer.policy.transformer)]
    with pytest.raises(RewardServiceError, match=r"after 2 attempts.*INTERNAL"):
        trainer.train(progress=False)
    after = lora.trainable_params(trainer.policy.transformer)
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert trainer.optimizer.state_dict()["state"] == {} and trainer.step == 0


class NeverParses:
    task = "gen"

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        return [
            RewardBreakdown(task="gen", formulation="qma", reward=None, status="unparseable:instruction")
            for _ in items
        ]


def test_step_without_scored_samples_leaves_weights_untouched(tiny_cfg) -> None:
    """Nothing parsed → nothing to learn from: AdamW's weight decay/momentum must not move the LoRA either."""
    from firm.rl import lora
    from firm.rl.trainer import Trainer

    trainer = Trainer(tiny_cfg(steps=1, optim__weight_decay=0.5), reward=NeverParses())
    before = [p.detach().clone() for p in lora.trainable_params(trainer.policy.transformer)]
    (res,) = trainer.train(progress=False)
    after = lora.trainable_params(trainer.policy.transformer)
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert res.metrics["reward/n"] == 0 and res.metrics["reward/parse_failure_rate"] == 1.0
    assert res.metrics["groups/dropped"] == 2


class MinRewardNeverParses:
    """A critic whose every answer is unparseable, under the `min_reward` policy: a value (0) *with* a failed status."""

    task = "gen"

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        return [
            RewardBreakdown(task="gen", formulation="qma", reward=0.0, status="unparseable:instruction")
            for _ in items
        ]


@pytest.mark.parametrize("reward", [NeverParses(), MinRewardNeverParses()], ids=["skip", "min_reward"])
def test_run_without_any_parsed_reward_fails_after_max_unscored_steps(tiny_cfg, reward, caplog) -> None:
    """Every answer unparseable: the run stops after reward.max_unscored_steps steps with one clear error naming
    the likely causes, instead of "training" to the end on nothing. Whether a sample counts is decided from its
    status, so min_reward's 0 is not a score."""
    from firm.rl.trainer import NoScoredSamplesError, Trainer

    trainer = Trainer(tiny_cfg(steps=10, reward__max_unscored_steps=2), reward=reward)
    with (
        caplog.at_level("WARNING", logger="firm.rl.trainer"),
        pytest.raises(NoScoredSamplesError) as exc,
    ):
        trainer.train(progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and trainer.step == 2, (msg, trainer.step)
    assert "no sample got a parsed reward in 2 consecutive steps" in msg
    assert "unparseable:instruction ×16" in msg
    assert all(k in msg for k in ("critic", "task", "max_new_tokens", "rubric", "reward.max_unscored_steps"))
    # the failure rate stayed at 1.0 (above the 0.5 threshold) for 2 steps: warned before failing
    assert any("parse failure rate 1.00" in r.getMessage() for r in caplog.records), caplog.text
    rows = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # the failed steps' metrics are still recorded


def test_sustained_parse_failures_warn_but_train(tiny_cfg, caplog) -> None:
    """Some answers parse (2 of 3): the run goes on, but a failure rate above the threshold is warned about."""
    from firm.rl.trainer import Trainer

    trainer = Trainer(tiny_cfg(steps=2, reward__warn_parse_failure_rate=0.2), reward=FlakyCritic())
    with caplog.at_level("WARNING", logger="firm.rl.trainer"):
        results = trainer.train(progress=False)
    assert len(results) == 2 and all(r.metrics["reward/n"] > 0 for r in results)
    warned = [r.getMessage() for r in caplog.records if "warn_parse_failure_rate=0.20" in r.getMessage()]
    assert len(warned) == 1 and "step 1: parse failure rate 0.38" in warned[0], caplog.text


def test_entrypoint_exits_nonzero_when_nothing_parses(tiny_cfg, tmp_path, monkeypatch, capsys) -> None:
    """`python -m firm.rl.train` (what `firmctl rl train` runs): exit 1 and one `error:` line, no summary."""
    import yaml

    import firm.rl.trainer as trainer_mod
    from firm.rl.train import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(as_dict=True, steps=5)))
    monkeypatch.setattr(trainer_mod, "build_reward", lambda rc, task: NeverParses())
    assert main(["--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no sample got a parsed reward in 3 consecutive steps" in errors[0], err
