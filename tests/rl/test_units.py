"""Unit tests: group advantages and r, the NFT and GRPO losses, SDE log-probs, LoRA adapters, config and prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from firm.errors import ConfigError, InputError
from firm.rl.advantages import group_advantages, optimality_probability
from firm.rl.losses import grpo_loss, nft_loss


def test_group_advantages_are_per_prompt_zscores_clipped() -> None:
    stats = group_advantages([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]], clip=5.0)
    a = torch.tensor(stats.advantages[:4])
    ref = (torch.tensor([1.0, 2, 3, 4]) - 2.5) / (torch.tensor([1.0, 2, 3, 4]).std(unbiased=False) + 1e-4)
    assert torch.allclose(a, ref, atol=1e-6)
    assert stats.advantages[4:] == [0.0] * 4 and stats.zero_std_groups == 1
    # one outlier in a large group exceeds 5 sigma → clipped
    big = group_advantages([[0.0] * 99 + [1.0]], clip=5.0).advantages
    assert max(big) == 5.0  # type: ignore[type-var]


def test_unparseable_samples_are_dropped_not_zero() -> None:
    stats = group_advantages([[1.0, None, 3.0], [None, 2.0, None]], clip=5.0)
    assert stats.advantages[1] is None and stats.dropped_samples == 3
    # the first group is scored on its two valid samples only (a 0 would have shifted the mean)
    assert stats.advantages[0] == pytest.approx(-1.0, abs=1e-3) and stats.advantages[2] == pytest.approx(
        1.0, abs=1e-3
    )
    # a group with one valid sample has no baseline: dropped as a whole
    assert stats.advantages[3:] == [None, None, None] and stats.dropped_groups == 1


def test_optimality_probability_mapping() -> None:
    a = torch.tensor([-7.0, -5.0, 0.0, 2.5, 5.0, 9.0])
    assert torch.allclose(optimality_probability(a, 5.0), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))


def _direct_nft(v_t, v_o, v_ref, x0, eps, s, r, beta, kl):
    target = eps - x0
    total = 0.0
    for i in range(v_t.shape[0]):
        vp = (1 - beta) * v_o[i] + beta * v_t[i]
        vn = (1 + beta) * v_o[i] - beta * v_t[i]
        li = r[i] * ((vp - target[i]) ** 2).mean() + (1 - r[i]) * ((vn - target[i]) ** 2).mean()
        total = total + li + kl * ((v_t[i] - v_ref[i]) ** 2).mean()
    return total / v_t.shape[0]


def test_nft_velocity_loss_matches_direct_computation_and_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 2, 2)
    v_t = torch.randn(shape, generator=g, requires_grad=True)
    v_o, v_ref, x0, eps = (torch.randn(shape, generator=g) for _ in range(4))
    s, r = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.1, 0.5, 1.0])
    parts = nft_loss(v_t, v_o, v_ref, x0, eps, s, r, beta=0.7, kl_coef=0.3, space="velocity")
    direct = _direct_nft(v_t, v_o, v_ref, x0, eps, s, r, 0.7, 0.3)
    assert torch.allclose(parts.loss, direct, atol=1e-6)
    (g1,) = torch.autograd.grad(parts.loss, v_t)
    (g2,) = torch.autograd.grad(direct, v_t)
    assert torch.allclose(g1, g2, atol=1e-6)


@pytest.mark.parametrize("space", ["velocity", "x0"])
def test_nft_loss_is_zero_when_all_velocities_equal_the_target(space: str) -> None:
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    v = eps - x0
    parts = nft_loss(
        v.clone(),
        v.clone(),
        v.clone(),
        x0,
        eps,
        torch.tensor([0.3, 0.8]),
        torch.tensor([0.2, 0.9]),
        space=space,
    )
    assert float(parts.loss) == pytest.approx(0.0, abs=1e-8)
    # and it is positive as soon as the current policy is off-target
    off = nft_loss(v + 0.1, v, v, x0, eps, torch.tensor([0.3, 0.8]), torch.tensor([0.2, 0.9]), space=space)
    assert float(off.loss) > 1e-4


def test_nft_x0_space_matches_reference_formula() -> None:
    g = torch.Generator().manual_seed(2)
    shape = (2, 3, 2, 2)
    v_t, v_o, x0, eps = (torch.randn(shape, generator=g, dtype=torch.float64).float() for _ in range(4))
    s, r = torch.tensor([0.4, 0.7]), torch.tensor([0.8, 0.3])
    parts = nft_loss(v_t, v_o, None, x0, eps, s, r, beta=1.0, kl_coef=0.0, space="x0")
    total = 0.0
    for i in range(2):
        xt = (1 - s[i]) * x0[i] + s[i] * eps[i]
        xp, xn = xt - s[i] * v_t[i], xt - s[i] * (2 * v_o[i] - v_t[i])
        wp, wn = (xp - x0[i]).abs().mean(), (xn - x0[i]).abs().mean()
        total += r[i] * ((xp - x0[i]) ** 2 / wp).mean() + (1 - r[i]) * ((xn - x0[i]) ** 2 / wn).mean()
    assert float(parts.loss) == pytest.approx(float(total / 2), rel=1e-5)


def test_grpo_loss_gradient_direction_and_clip() -> None:
    lp = torch.zeros(4, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0, 0.0])
    parts, clip_frac = grpo_loss(lp, lp.detach(), adv, torch.zeros(4, 2), torch.zeros(4, 2), 0.5, kl_coef=0.1)
    (grad,) = torch.autograd.grad(parts.loss, lp)
    assert torch.allclose(grad, -adv / 4) and float(clip_frac) == 0.0
    # beyond the clip range the ratio is clipped for positive advantages: no gradient
    lp2 = torch.full((1,), 0.5, requires_grad=True)
    p2, cf = grpo_loss(lp2, torch.zeros(1), torch.ones(1), torch.zeros(1, 1), None, 0.5, clip_range=1e-4)
    (g2,) = torch.autograd.grad(p2.loss, lp2)
    assert float(g2) == 0.0 and float(cf) == 1.0


def _policy(tiny_sd3: Path):
    from firm.rl import lora
    from firm.rl.config import PolicyConfig
    from firm.rl.policies.loading import load_policy

    pol = load_policy(
        PolicyConfig(kind="sd3", uri=str(tiny_sd3), resolution=32, max_sequence_length=16),
        torch.device("cpu"),
    )
    lora.add_lora(
        pol.transformer, rank=4, alpha=8, init="gaussian", targets=["to_q", "to_k", "to_v", "to_out.0"]
    )
    with torch.no_grad():  # a non-zero trainable LoRA so current ≠ old ≠ reference
        for p in lora.trainable_params(pol.transformer):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return pol


def test_grpo_logprob_recomputation_equals_sampling_pass(tiny_sd3: Path) -> None:
    from firm.rl.sampling import sde_rollout, sde_step, sigma_max_of

    pol = _policy(tiny_sd3)
    cond = pol.encode(["a red apple"]).repeat(3)
    g = torch.Generator().manual_seed(0)
    sig = pol.sigmas(4, cond)
    traj = sde_rollout(pol.velocity, pol.initial_noise(3, g, cond), sig, cond, noise_level=0.7, generator=g)
    assert traj.states is not None and traj.log_probs is not None
    assert traj.states.shape[:2] == (3, 5) and traj.log_probs.shape == (3, 4)
    for j in range(4):
        x = traj.states[:, j]
        v = pol.velocity(x, torch.full((3,), float(sig[j])), cond)  # with grad, as in training
        st = sde_step(
            v,
            x,
            float(sig[j]),
            float(sig[j + 1]),
            noise_level=0.7,
            sigma_max=sigma_max_of(sig),
            next_state=traj.states[:, j + 1],
        )
        assert torch.allclose(st.log_prob, traj.log_probs[:, j], atol=1e-5)
        assert st.log_prob.requires_grad


def test_lora_adapters_current_old_reference(tiny_sd3: Path) -> None:
    from firm.rl import lora

    pol = _policy(tiny_sd3)
    t = pol.transformer
    cond = pol.encode(["a cat"])
    x, s = torch.randn(1, 16, 4, 4), torch.tensor([0.5])
    with torch.no_grad():
        v_cur = pol.velocity(x, s, cond)
        with lora.using(t, lora.OLD):
            v_old = pol.velocity(x, s, cond)
        with lora.using(t, None):
            v_ref = pol.velocity(x, s, cond)
    # old was copied from the gaussian-init adapter (B = 0) → equals the reference; current moved away
    assert torch.allclose(v_old, v_ref) and not torch.allclose(v_cur, v_old)
    lora.ema_update(t, decay=0.0)  # old ← current
    with torch.no_grad(), lora.using(t, lora.OLD):
        assert torch.allclose(pol.velocity(x, s, cond), v_cur, atol=1e-6)
    assert all(p.requires_grad for p in lora.trainable_params(t))
    assert not any(p.requires_grad for p in lora.adapter_params(t, lora.OLD))
    assert lora.ema_decay(0, 0.5, 0.001) == 0.0 and lora.ema_decay(100, 0.5, 0.001) == pytest.approx(0.1)
    assert lora.ema_decay(10_000, 0.5, 0.001) == 0.5


def test_config_rejects_group_size_one_and_bad_overrides(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="group_size"):
        tiny_cfg(sampling__group_size=1)
    with pytest.raises(ConfigError, match=r"policy\.kind=sd3"):
        tiny_cfg(task="edit")
    with pytest.raises(ConfigError, match="expected key=value"):
        from firm.rl.config import apply_overrides

        apply_overrides({}, ["steps"])


def test_shipped_rl_recipes_validate() -> None:
    from firm.recipes import list_recipes
    from firm.rl.config import load_config

    recipes = list_recipes("rl")
    assert {r.name for r in recipes} >= {
        "rl/tiny_sd3_nft",
        "rl/tiny_sd3_grpo",
        "rl/sd35m_nft_qma",
        "rl/sd35m_grpo_qma",
        "rl/qwen_edit_2509_nft_cme",
        "rl/tiny_qwen_edit_nft",
    }
    for r in recipes:
        cfg = load_config(r.path)
        assert r.path.read_text().startswith("#") and "firm.rl.train" in r.path.read_text()
        if r.name.startswith("rl/sd35m"):
            assert (cfg.sampling.num_steps, cfg.sampling.group_size, cfg.sampling.prompts_per_step) == (
                10,
                16,
                48,
            )
            assert (cfg.lora.rank, cfg.lora.alpha, cfg.policy.resolution, cfg.steps) == (32, 64, 512, 600)
        if r.name == "rl/qwen_edit_2509_nft_cme":
            assert (cfg.sampling.num_steps, cfg.sampling.group_size, cfg.sampling.prompts_per_step) == (
                6,
                16,
                16,
            )
            assert (cfg.steps, cfg.sampling.eval_num_steps, cfg.task, cfg.reward.kind) == (
                150,
                15,
                "edit",
                "triton",
            )
            assert cfg.optim.lr == 1.5e-3  # the official editing config's learning rate
        if r.name.startswith(("rl/sd35m", "rl/qwen_edit_2509")):  # the official trainers' dynamics
            assert (cfg.advantages.std, cfg.ema.enabled, cfg.ema.decay) == ("global", True, 0.9)
            assert cfg.lora.target_modules is not None
            assert all(t.startswith("attn.") for t in cfg.lora.target_modules)
            assert cfg.reward.parse_failure == "skip"  # FIRM's choice, named in the header
            head = r.path.read_text().split("\nname:")[0]
            assert all(word in head for word in ("paper", "official", "FIRM")), r.name
        if r.name.startswith("rl/sd35m_nft") or r.name == "rl/qwen_edit_2509_nft_cme":
            assert (cfg.optim.updates_per_step, cfg.sampling.solver, cfg.nft.timestep_draw) == (
                1,
                "dpm2",
                "per_sample",
            )
        if r.name == "rl/sd35m_grpo_qma":  # Flow-GRPO's settings
            g = cfg.grpo
            assert (g.guidance_scale, g.timestep_draw, g.kl_coef, cfg.optim.updates_per_step) == (
                4.5,
                "first",
                0.04,
                2,
            )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a cat\n\na dog\n", r"prompts.txt:2: empty prompt"),
        ("a cat\na dog\na cat\n", r"prompts.txt:3: duplicate prompt \(first at line 1\)"),
        ("x" * 50 + "\n", r"prompts.txt:1: prompt is 50 characters, over the limit of 20"),
    ],
)
def test_bad_prompt_files_are_rejected_with_file_and_line(tmp_path: Path, content: str, match: str) -> None:
    from firm.rl.data import load_prompts

    p = tmp_path / "prompts.txt"
    p.write_text(content)
    with pytest.raises(InputError, match=match):
        load_prompts(str(p), "gen", max_chars=20)


def test_edit_prompts_need_existing_source_images(tmp_path: Path) -> None:
    from firm.rl.data import load_prompts

    p = tmp_path / "edit.jsonl"
    p.write_text('{"instruction": "make it red", "image": "missing.png"}\n')
    with pytest.raises(InputError, match=r"edit.jsonl:1: source image .*missing.png does not exist"):
        load_prompts(str(p), "edit")
    with pytest.raises(InputError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.txt"), "gen")


def test_reward_hacking_monitors() -> None:
    from firm.rl.monitor import IdentityCopyFlag, detail, entropy, source_similarity

    g = torch.Generator().manual_seed(0)
    flat, noisy = torch.full((1, 3, 16, 16), 0.5), torch.rand(1, 3, 16, 16, generator=g)
    assert float(detail(flat)) == 0.0 and float(detail(noisy)) > 0.1
    assert float(entropy(flat)) == 0.0 and float(entropy(noisy)) > 3.0
    assert float(source_similarity(noisy, noisy)) == 1.0 and float(source_similarity(flat, noisy)) < 0.9
    flag = IdentityCopyFlag(threshold=0.95, window=3)
    assert [flag.update(x) for x in (0.90, 0.96, 0.97, 0.99)] == [False, False, True, True]
    steady = IdentityCopyFlag(threshold=0.95, window=3)
    assert not any(steady.update(x) for x in (0.99, 0.98, 0.97, 0.96))  # high but not trending up


def test_low_confidence_drop_removes_advantages_and_constant_confidence_changes_nothing() -> None:
    """reward.low_confidence (firm.rl.confidence): with `drop`, samples under the threshold (or outside the group's
    most confident fraction) get no advantage and leave the baseline; a constant confidence flags nothing."""
    from firm.rl.advantages import group_advantages
    from firm.rl.confidence import apply_low_confidence, low_confidence_flags

    rewards = [0.9, 0.1, 0.5, 0.7]
    conf = [0.95, 0.2, 0.9, None]  # the last reward has no confidence: never flagged
    plan = apply_low_confidence(rewards, conf, "drop", threshold=0.5)
    assert plan.flagged == [False, True, False, False] and plan.train == [0.9, None, 0.5, 0.7]
    adv = group_advantages([plan.train]).advantages
    assert adv[1] is None and all(a is not None for i, a in enumerate(adv) if i != 1)
    assert adv == group_advantages([[0.9, None, 0.5, 0.7]]).advantages  # as if it had never been scored
    # coverage 0.75 of 4: the least confident of the known ones goes
    assert low_confidence_flags([0.9, 0.8, 0.3, 0.7], coverage=0.75) == [False, False, True, False]
    # a constant-confidence critic: nothing flagged, advantages unchanged, under every mode
    for mode in ("drop", "discount"):
        same = apply_low_confidence(rewards, [0.6] * 4, mode, threshold=0.5, coverage=0.5)  # type: ignore[arg-type]
        assert same.train == rewards and same.weights == [1.0] * 4 and not any(same.flagged)
        assert group_advantages([same.train]).advantages == group_advantages([rewards]).advantages
    disc = apply_low_confidence(rewards, conf, "discount", threshold=0.5)
    assert disc.train == rewards and disc.weights == [1.0, 0.2, 1.0, 1.0]
    keep = apply_low_confidence(rewards, conf, "keep", threshold=0.99)
    assert keep.train == rewards and not any(keep.flagged)


def test_low_confidence_config() -> None:
    from firm.rl.config import RewardConfig

    rc = RewardConfig(low_confidence="drop", confidence_coverage=0.9)
    assert rc.low_confidence == "drop" and rc.confidence_threshold is None
    with pytest.raises(ValueError):
        RewardConfig(low_confidence="ignore")  # type: ignore[arg-type]
