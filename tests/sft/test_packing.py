"""Token-budget micro-batches (`batch.packing: token_budget`, firm.critic.packing): the schedule respects the budget,
uses every row once per epoch, is the same on every rank count and after a resume; measured lengths equal the
collator's; one packed step's gradient equals the gradient of the whole global batch in one forward; a packed run
resumes exactly; bad settings are one error naming the field.

Verified by hand, too slow for the suite (2 processes under torchrun, tiny critic, 4 steps, budgets 700 and 2000):
DDP, DeepSpeed ZeRO-2 and ZeRO-3 packed runs log the same losses and gradient norms to ~1e-6 whatever the budget,
and a packed ZeRO-3 run killed after step 2 resumes to the same losses."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from firm.critic.packing import RowSize, TokenBudgetPlanner, budget_micro_batches, split_to
from firm.critic.sft_config import SFTConfig, load_sft_config
from firm.errors import ConfigError, InputError
from tests.sft.helpers import packing_config, read_metrics, train_losses


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Edit rows (2 images) and gen rows (1 image) of unaligned 100×100 images: two lengths, mixed in every step."""
    from firm.curation.synthetic_sft import write_synthetic_sft_dataset

    out = tmp_path_factory.mktemp("packing-data") / "mixed"
    write_synthetic_sft_dataset(
        out, n_edit=12, n_gen=12, axes=["execution", "instruction"], size=100, val_fraction=0.1
    )
    return out


def _sizes(n: int, seed: int = 0) -> list[RowSize]:
    rng = random.Random(seed)
    return [RowSize(tokens=rng.randint(40, 400), labels=rng.randint(5, 30)) for _ in range(n)]


def test_schedule_respects_the_budget_and_uses_each_row_once_per_epoch() -> None:
    sizes, g, world, budget = _sizes(103), 12, 3, 900
    planner = TokenBudgetPlanner(sizes, global_batch=g, world=world, budget=budget, seed=7)
    assert planner.steps_per_epoch == 103 // g
    orders = []
    for epoch in range(2):
        seen: list[int] = []
        for step in range(epoch * planner.steps_per_epoch, (epoch + 1) * planner.steps_per_epoch):
            plans = [planner.plan(step, r) for r in range(world)]
            assert {p.epoch for p in plans} == {epoch}
            assert len({len(p.micro) for p in plans}) == 1  # the same number of passes on every rank
            rows = [i for p in plans for b in p.micro for i in b]
            assert sorted(rows) == sorted(planner.step_rows(step)[1]) and len(rows) == g
            assert all(len(p.micro[0]) >= 1 and sum(map(len, p.micro)) == g // world for p in plans)
            for p in plans:
                for b, tokens, labels in zip(p.micro, p.tokens, p.labels, strict=True):
                    assert len(b) * max(sizes[i].tokens for i in b) <= budget  # padded tokens
                    assert tokens == sum(sizes[i].tokens for i in b) and labels == sum(
                        sizes[i].labels for i in b
                    )
                assert p.step_labels == sum(sizes[i].labels for i in rows)
            seen += rows
        assert len(seen) == len(set(seen)) == planner.steps_per_epoch * g  # once each; the 7-row tail dropped
        orders.append(seen)
    assert orders[0] != orders[1]


def test_schedule_is_deterministic_and_resumes_from_a_step() -> None:
    sizes = _sizes(60, seed=1)

    def planner(seed: int = 3, budget: int = 1000) -> TokenBudgetPlanner:
        return TokenBudgetPlanner(sizes, global_batch=8, world=2, budget=budget, seed=seed)

    run = planner()
    full = [(run.plan(s, 0), run.plan(s, 1)) for s in range(20)]  # 7 steps per epoch: crosses two epochs
    resumed = planner()  # a fresh process resuming at step 11 recomputes the same micro-batches
    assert [(resumed.plan(s, 0), resumed.plan(s, 1)) for s in range(11, 20)] == full[11:]
    assert [planner(seed=4).step_rows(s)[1] for s in range(7)] != [run.step_rows(s)[1] for s in range(7)]
    # another budget regroups a step's rows, never changes which rows the step takes
    other = planner(budget=2500)
    assert all(sorted(other.step_rows(s)[1]) == sorted(run.step_rows(s)[1]) for s in range(20))
    assert [len(other.plan(s, 0).micro) for s in range(7)] != [len(run.plan(s, 0).micro) for s in range(7)]


def test_micro_batch_cutting() -> None:
    assert budget_micro_batches([100, 300, 100, 250, 90], 550) == [[1], [3, 0], [2, 4]]
    assert split_to([[0, 1, 2], [3]], 3) == [[0, 1], [2], [3]]
    with pytest.raises(InputError, match="300 tokens exceeds the micro-batch budget of 200"):
        budget_micro_batches([100, 300], 200)


def test_measured_lengths_equal_the_collated_rows(tiny_critic_dir: Path, mixed_dataset: Path) -> None:
    from transformers import AutoConfig

    from firm.critic.collate import IGNORE_INDEX, SFTCollator
    from firm.critic.critic import load_processor
    from firm.curation.dataset import read_sft_dataset

    ds = read_sft_dataset(str(mixed_dataset))
    processor = load_processor(str(tiny_critic_dir), AutoConfig.from_pretrained(tiny_critic_dir).model_type)
    rows = [ds.rows[0], ds.rows[1], ds.rows[-1], ds.rows[-2]]  # edits and gens
    for max_pixels in (None, 28 * 28 * 2):  # the processor's bounds, then an explicit budget (one pixel rule)
        collator = SFTCollator(processor, ds, max_pixels=max_pixels)
        encoded = [collator.encode(r) for r in rows]
        want = [
            RowSize(tokens=len(e["input_ids"]), labels=int((e["labels"] != IGNORE_INDEX).sum()))
            for e in encoded
        ]
        assert collator.measure(rows) == want
        assert len({w.tokens for w in want}) == 2
    with pytest.raises(InputError, match=r"exceed data\.max_seq_len=100"):
        SFTCollator(processor, ds, max_seq_len=100).measure(rows)


def test_one_packed_step_has_the_gradient_of_the_whole_batch(
    tiny_critic_dir: Path, mixed_dataset: Path
) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from firm.critic.collate import SFTCollator
    from firm.critic.critic import load_processor
    from firm.critic.sft import DistEnv, accumulate_step
    from firm.curation.dataset import read_sft_dataset

    ds = read_sft_dataset(str(mixed_dataset))
    processor = load_processor(str(tiny_critic_dir), AutoConfig.from_pretrained(tiny_critic_dir).model_type)
    collator = SFTCollator(processor, ds)
    rows = [r for r in ds.rows if r.split == "train"]
    rows = [*rows[:4], *rows[-2:]]  # 4 edit + 2 gen rows: two lengths, two image counts
    sizes = collator.measure(rows)
    model = AutoModelForImageTextToText.from_pretrained(tiny_critic_dir, dtype=torch.float32)
    model.train()

    model(**collator(rows)).loss.backward()  # the reference: one padded forward, Hugging Face's token mean
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    budget = 3 * min(s.tokens for s in sizes)  # three edit rows, or two (longer) gen rows
    plan = TokenBudgetPlanner(sizes, global_batch=6, world=1, budget=budget, seed=0).plan(0, 0)
    assert list(map(len, plan.micro)) == [2, 3, 1]  # gen, gen | edit ×3 | edit: unequal passes
    cfg = SFTConfig.model_validate(
        {"run_name": "g", "model": {"path": "m"}, "data": {"dataset": "d"},
         "batch": {"per_device": 6, "packing": "token_budget", "max_tokens_per_batch": budget}}
    )  # fmt: skip
    env = DistEnv(rank=0, world=1, local_rank=0, backend="gloo", device=torch.device("cpu"))
    batches = (collator([rows[i] for i in b]) for b in plan.micro)
    accumulate_step(model, None, batches, len(plan.micro), cfg=cfg, env=env, step_labels=plan.step_labels)
    for name, want in ref.items():
        got = dict(model.named_parameters())[name].grad
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


def test_a_packed_run_resumes_exactly_and_refuses_another_packing_mode(
    tiny_critic_dir: Path, mixed_dataset: Path, tmp_path: Path
) -> None:
    from firm.critic.sft import train

    budget = 2 * 400  # two rows per micro-batch (edit rows are ~300 tokens, gen rows ~350)
    ref = train(packing_config(tiny_critic_dir, mixed_dataset, tmp_path / "a", budget, "a", max_steps=4))
    metrics = [m for m in read_metrics(ref.run_dir) if "train/loss" in m]
    assert [m["train/micro_batches"] for m in metrics] == [4, 4, 4, 4]  # global batch 8 in pairs
    step2 = ref.checkpoints[0]
    assert step2.endswith("step-2")
    resumed = train(
        packing_config(tiny_critic_dir, mixed_dataset, tmp_path / "b", budget, "b", max_steps=4, resume=step2)
    )
    a, b = train_losses(ref.run_dir), train_losses(resumed.run_dir)
    assert sorted(b) == [3, 4] and [b[3], b[4]] == pytest.approx(
        [a[3], a[4]], rel=1e-6
    )  # step 3 opens epoch 1
    unpacked = packing_config(tiny_critic_dir, mixed_dataset, tmp_path / "c", None, "c", resume=step2)
    with pytest.raises(ConfigError, match=r"batch\.packing=token_budget, this run uses batch\.packing=none"):
        train(unpacked)
    with pytest.raises(
        ConfigError, match=r"batch\.max_tokens_per_batch=200 is smaller than train row .* tokens"
    ):
        train(packing_config(tiny_critic_dir, mixed_dataset, tmp_path / "d", 200, "d"))


def test_bad_packing_settings_name_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    from firm.critic.sft import main

    base = "critic/qwen3vl_8b_edit_full"
    cfg = load_sft_config(base)
    assert cfg.batch.packing == "token_budget" and cfg.batch.max_tokens_per_batch
    cases = {
        "batch.max_tokens_per_batch=null": r"batch\.packing=token_budget needs batch\.max_tokens_per_batch",
        "batch.packing=none": r"batch\.max_tokens_per_batch=\d+ is only used with batch\.packing=token_budget",
        "batch.max_tokens_per_batch=2048": r"batch\.max_tokens_per_batch=2048 is below data\.max_seq_len=4096",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_sft_config(base, [override])
    assert main(["--config", base, "batch.max_tokens_per_batch=2048"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "batch.max_tokens_per_batch=2048" in err[0]
