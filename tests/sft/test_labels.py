"""What the SFT loss trains on, and what the validation metrics compare: checks that fail when either drifts."""

from __future__ import annotations

import math
from pathlib import Path

import pydantic
import pytest

from firm.critic.collate import IGNORE_INDEX, SFTCollator
from firm.critic.sft import score_metrics


def test_labels_train_only_the_answer_and_its_closing_token(tiny_critic_dir: Path, sft_dataset: Path) -> None:
    """A padded batch of rows with different targets: every label is -100 except the assistant answer's tokens
    and the `<|im_end|>` that closes it (what makes the trained critic stop); the prompt, the assistant header,
    the template's trailing newline and the padding are ignored."""
    from firm.critic.critic import load_processor
    from firm.curation.dataset import read_sft_dataset

    ds = read_sft_dataset(sft_dataset)
    first, second = ds.split("train")[:2]
    longer = second.target.replace(
        '."', ', counted one by one on the edited image."'
    )  # a longer answer: padding
    rows = [first, second.model_copy(update={"target": longer})]
    processor = load_processor(str(tiny_critic_dir), "qwen3_vl")
    tok = processor.tokenizer
    batch = SFTCollator(processor, ds)(rows)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape and int(mask.sum(1).min()) < ids.shape[1]  # at least one row is padded
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for i, row in enumerate(rows):
        trained = (labels[i] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert trained == list(range(trained[0], trained[-1] + 1))  # one contiguous span
        assert labels[i, trained].tolist() == ids[i, trained].tolist()  # labels are the tokens themselves
        assert tok.decode(ids[i, trained]) == row.target + "<|im_end|>"
        assert (
            ids[i, trained[-1]] == end
            and len(trained) == len(tok(row.target, add_special_tokens=False)["input_ids"]) + 1
        )
        prompt = tok.decode(ids[i, : trained[0]])
        assert (
            prompt.endswith("<|im_start|>assistant\n") and row.target not in prompt.split("assistant\n")[-1]
        )
        n = int(mask[i].sum())
        assert (labels[i, trained[-1] + 1 :] == IGNORE_INDEX).all() and trained[
            -1
        ] < n - 1  # "\n" after, padding


def test_baseline_mae_is_over_the_same_items_as_the_critics() -> None:
    """One unparsed answer (target 5, far from the majority score 1) must not inflate the baseline: both MAEs are
    over the two parsed items."""
    m = score_metrics([None, 3, 1], [5, 3, 2], majority=1)
    assert m["val/parse_rate"] == 2 / 3
    assert (
        m["val/mae_parsed"] == 0.5 and m["val/baseline_mae_parsed"] == 1.5
    )  # (|3-1| + |2-1|) / 2, not 7 / 3
    assert m["val/mae"] == m["val/mae_parsed"]
    multi = score_metrics([[1, 2], None], [[2, 2], [5, 5]], majority=[1, 1])  # per-axis lists: mean over axes
    assert multi["val/mae_parsed"] == 0.5 and multi["val/baseline_mae_parsed"] == 1.0
    none = score_metrics([None], [3], majority=1)
    assert (
        none["val/parse_rate"] == 0
        and math.isnan(none["val/mae_parsed"])
        and math.isnan(none["val/baseline_mae_parsed"])
    )


def test_a_row_longer_than_max_seq_len_is_an_error_naming_it(
    tiny_critic_dir: Path, sft_dataset: Path
) -> None:
    import pytest

    from firm.critic.critic import load_processor
    from firm.curation.dataset import read_sft_dataset
    from firm.errors import InputError

    ds = read_sft_dataset(sft_dataset)
    row = ds.split("train")[0]
    collator = SFTCollator(load_processor(str(tiny_critic_dir), "qwen3_vl"), ds, max_seq_len=64)
    with pytest.raises(InputError, match=rf"row {row.id} .*tokens .* exceed data.max_seq_len=64"):
        collator([row])


def test_the_encode_cache_returns_what_a_fresh_encode_does_within_its_bound(
    tiny_critic_dir: Path, sft_dataset: Path
) -> None:
    """`data.encode_cache_mb`: a batch collated from cached rows equals the freshly encoded batch, rows are kept
    only while they fit the bound, and a row with another axis or split is not mistaken for a cached one."""
    import torch

    from firm.critic.critic import load_processor
    from firm.critic.sft_config import DataCfg
    from firm.curation.dataset import read_sft_dataset

    ds = read_sft_dataset(sft_dataset)
    rows = ds.split("train")[:4]
    processor = load_processor(str(tiny_critic_dir), "qwen3_vl")
    fresh = SFTCollator(processor, ds)(rows)
    cached = SFTCollator(processor, ds, cache_bytes=64 << 20)
    first, again = cached(rows), cached(rows)
    assert len(cached._cache) == 4 and cached.cached_bytes > 0
    for batch in (first, again):
        assert set(batch) == set(fresh) and all(torch.equal(batch[k], fresh[k]) for k in fresh)
    one_row = cached.cached_bytes // 4
    bounded = SFTCollator(processor, ds, cache_bytes=2 * one_row + one_row // 2)  # room for two rows
    bounded(rows)
    assert len(bounded._cache) == 2 and bounded.cached_bytes <= bounded.cache_bytes
    assert SFTCollator(processor, ds)._cache == {}  # off by default
    longer = rows[0].target.replace('."', ', counted one by one on the edited image."')
    other = rows[0].model_copy(update={"split": "val", "target": longer})  # same id and axis, another split
    got = cached.encode_cached(other)["labels"]
    assert torch.equal(got, SFTCollator(processor, ds).encode(other)["labels"])
    assert not torch.equal(got, cached.encode_cached(rows[0])["labels"])
    assert DataCfg(dataset="d").encode_cache_mb == 0
    with pytest.raises(pydantic.ValidationError, match="encode_cache_mb"):
        DataCfg(dataset="d", encode_cache_mb=-1)
