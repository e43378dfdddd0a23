"""Token-budget micro-batches for critic SFT (`batch.packing: token_budget`, `batch.max_tokens_per_batch: N`).

What this is: **token-budget bucketing**, not padding-free packing. Rows are never concatenated into one sequence;
each micro-batch is still a right-padded `[rows, longest row]` batch with an attention mask, so no attention can
cross rows on any attention backend (eager, sdpa, flash). What changes is how many rows a micro-batch holds: as many
as fit the budget, counted as padded tokens (rows × longest row, image tokens included — what activation and logits
memory scale with), instead of a fixed `batch.per_device`. True packing (one concatenated sequence with per-row
position ids and varlen attention boundaries) would also save the padding that remains inside a bucket, but it needs
flash-attention varlen kernels and Qwen3-VL's multimodal RoPE positions per packed row; it is not implemented.

The optimizer step is unchanged: it consumes the same global batch of rows, `batch.per_device × batch.grad_accum ×
world size` (= `batch.global_size`), as an unpacked run, so the schedule, `steps_per_epoch`, checkpoints and
`global_size` mean what they meant. Only the split of those rows into micro-batches depends on the budget:

1. the epoch order is a shuffle of all train rows seeded with (seed, epoch); step `s` of the epoch takes the global
   batch `order[s·G:(s+1)·G]` (the last `len(rows) mod G` rows of an epoch are dropped, as an unpacked run drops its
   incomplete tail), so every row is used at most once per epoch and the rows of a step do not depend on lengths;
2. the step's rows are sorted by length (longest first) and dealt to the ranks in snake order (0..W-1, W-1..0, …):
   every rank gets G/W rows and about the same number of tokens;
3. each rank cuts its sorted rows greedily into micro-batches: a micro-batch takes the next rows while
   rows × its first (longest) row ≤ the budget — rows of similar length go together, so little padding remains;
4. the ranks must run the same number of forward/backward passes (DeepSpeed ZeRO reduces gradients, and ZeRO-3
   gathers parameters, collectively in every pass), so ranks with fewer micro-batches split their largest ones in
   two until every rank has the step's maximum count; splitting only lowers padded tokens.

All of it is a pure function of (row lengths, seed, step, global batch, world size, budget): a resumed run recomputes
exactly the micro-batches an uninterrupted run would see from the checkpointed step, with nothing extra stored.

Loss: with a variable number of micro-batches the usual "mean of the micro-batch means" would weight rows by the
split. Packing instead normalises per learned token over the whole optimizer step: each micro-batch's loss is the sum
of its token cross-entropies divided by the learned tokens of the entire global batch (all ranks; known in advance
from the measured lengths, passed to the model as `num_items_in_batch`, Hugging Face's loss convention), multiplied
by the world size because DDP and DeepSpeed average gradients over ranks. The step's gradient is then exactly the
gradient of one forward over the whole global batch with the token-mean loss, whatever the budget: changing
`batch.max_tokens_per_batch` (also between a checkpoint and its resume) changes memory and speed, not the update
(up to float summation order). Under DeepSpeed the gradient-accumulation boundary is set by the trainer before each
micro-batch (`engine.set_gradient_accumulation_boundary`) and the loss is not rescaled by the configured
`gradient_accumulation_steps` (`engine.backward(..., scale_wrt_gas=False)`); `train_micro_batch_size_per_gpu` and
`gradient_accumulation_steps` keep their nominal values (`per_device`, `grad_accum`) only so that DeepSpeed's
`train_batch_size` check and sample counter match the global batch. Unpacked runs keep the mean of micro-batch means
(equal to the token mean when there is one micro-batch per step).

Lengths are measured once at start-up (`SFTCollator.measure`: the templated prompt tokenized, image tokens from each
image's header size through the processor's own resize rule, no image decoded), split over the ranks and summed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from firm.errors import ConfigError, InputError


@dataclass(frozen=True)
class RowSize:
    """A row's tokenized size: `tokens` = input ids (prompt, expanded image tokens, answer); `labels` = the learned
    tokens (the answer and its closing <|im_end|>)."""

    tokens: int
    labels: int


@dataclass(frozen=True)
class StepPlan:
    """One rank's share of an optimizer step."""

    epoch: int
    micro: list[list[int]]  # row indices per micro-batch, longest first; every rank has the same count
    tokens: list[int]  # each micro-batch's non-padding tokens (what the collated attention mask must sum to)
    labels: list[int]  # each micro-batch's learned tokens
    step_labels: int  # learned tokens of the whole global batch, all ranks (the loss normaliser)


def budget_micro_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Cut rows (given by their lengths, any order) into micro-batches of at most `budget` padded tokens each:
    sorted longest first (ties by index), a micro-batch takes the next row while rows × its first row ≤ budget.
    Returns positions into `lengths`. Raises `InputError` when one row alone exceeds the budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        if lengths[i] > budget:
            raise InputError(
                f"a row of {lengths[i]} tokens exceeds the micro-batch budget of {budget} tokens"
            )
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def split_to(batches: list[list[int]], count: int) -> list[list[int]]:
    """Split the largest micro-batches (most rows; the first of equals) in two until there are `count`.
    Requires at least `count` rows in all."""
    out = [list(b) for b in batches]
    if sum(len(b) for b in out) < count:
        raise ValueError(f"cannot make {count} micro-batches from {sum(len(b) for b in out)} rows")
    while len(out) < count:
        k = max(range(len(out)), key=lambda j: (len(out[j]), -j))
        b = out[k]
        half = (len(b) + 1) // 2
        out[k : k + 1] = [b[:half], b[half:]]
    return out


class TokenBudgetPlanner:
    """The deterministic token-budget schedule of a run (see the module docstring)."""

    def __init__(self, sizes: Sequence[RowSize], *, global_batch: int, world: int, budget: int, seed: int):
        if global_batch % world:
            raise ConfigError(f"global batch {global_batch} is not divisible by world size {world}")
        self.sizes = list(sizes)
        self.global_batch = global_batch
        self.world = world
        self.budget = budget
        self.seed = seed
        self.steps_per_epoch = len(self.sizes) // global_batch
        self._order: tuple[int, list[int]] | None = None

    def epoch_order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            order = list(range(len(self.sizes)))
            random.Random(f"packing-{self.seed}-{epoch}").shuffle(order)
            self._order = (epoch, order)
        return self._order[1]

    def step_rows(self, step: int) -> tuple[int, list[int]]:
        """(epoch, the global batch's row indices) of optimizer step `step` (0-based, counted over the whole run)."""
        if self.steps_per_epoch == 0:
            raise InputError(
                f"{len(self.sizes)} train rows do not fill one global batch of {self.global_batch}"
            )
        epoch, within = divmod(step, self.steps_per_epoch)
        g = self.global_batch
        return epoch, self.epoch_order(epoch)[within * g : (within + 1) * g]

    def rank_rows(self, step: int) -> tuple[int, list[list[int]]]:
        """(epoch, each rank's rows, longest first) of step `step`: the step's rows dealt in snake order."""
        epoch, rows = self.step_rows(step)
        rows = sorted(rows, key=lambda i: (-self.sizes[i].tokens, i))
        ranks: list[list[int]] = [[] for _ in range(self.world)]
        for k, i in enumerate(rows):
            lap, pos = divmod(k, self.world)
            ranks[pos if lap % 2 == 0 else self.world - 1 - pos].append(i)
        return epoch, ranks

    def plan(self, step: int, rank: int) -> StepPlan:
        """Rank `rank`'s micro-batches of optimizer step `step`."""
        epoch, ranks = self.rank_rows(step)
        cut = [budget_micro_batches([self.sizes[i].tokens for i in rows], self.budget) for rows in ranks]
        count = max(len(c) for c in cut)
        mine = [[ranks[rank][p] for p in b] for b in split_to(cut[rank], count)]
        return StepPlan(
            epoch=epoch,
            micro=mine,
            tokens=[sum(self.sizes[i].tokens for i in b) for b in mine],
            labels=[sum(self.sizes[i].labels for i in b) for b in mine],
            step_labels=sum(self.sizes[i].labels for rows in ranks for i in rows),
        )


def check_budget(rows: Sequence[Any], sizes: Sequence[RowSize], budget: int) -> None:
    """Every row must fit a micro-batch on its own: one `ConfigError` naming the field and the longest row."""
    longest = max(range(len(sizes)), key=lambda i: (sizes[i].tokens, -i))
    n = sizes[longest].tokens
    if n > budget:
        row = rows[longest]
        raise ConfigError(
            f"batch.max_tokens_per_batch={budget} is smaller than train row {row.id} ({row.axis}) of {n} tokens "
            f"(prompt, image tokens and answer; the longest train row); raise batch.max_tokens_per_batch to at least "
            f"{n}, or lower model.max_pixels"
        )


def measure_rows(
    collator: Any, rows: Sequence[Any], *, rank: int = 0, world: int = 1, device: Any = None
) -> list[RowSize]:
    """Every row's `RowSize`, each rank measuring rows[rank::world] and the results summed over the process group
    (every rank ends with all sizes)."""
    import torch.distributed as dist

    table = torch.zeros((len(rows), 2), dtype=torch.long)
    idx = list(range(rank, len(rows), world))
    for i, size in zip(idx, collator.measure([rows[i] for i in idx]), strict=True):
        table[i, 0], table[i, 1] = size.tokens, size.labels
    if world > 1 and dist.is_initialized():
        t = table.to(device) if device is not None else table
        dist.all_reduce(t)
        table = t.cpu()
    return [RowSize(tokens=int(a), labels=int(b)) for a, b in table.tolist()]
