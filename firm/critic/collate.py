"""Turn critic SFT rows into model batches: chat messages with the STUDENT rubric plus the assistant target,
labels that mask everything but the assistant response, and micro-batches packed by image count.

The prompt is laid out by `firm.critic.messages.build_messages` — the same function the `Critic` uses at inference,
so training and serving see identical prompts.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from firm.critic.messages import build_messages, encode_images, message_images
from firm.curation.dataset import CriticSFTRow, SFTDataset
from firm.errors import InputError
from firm.rewards.packs import load_pack
from firm.rewards.rubrics import RubricPack

IGNORE_INDEX = -100


def row_messages(
    row: CriticSFTRow,
    images: Sequence[Any],
    *,
    with_answer: bool = True,
    pack: str | RubricPack | None = None,
) -> list[dict[str, Any]]:
    """Chat messages for a row: the pack's student rubric (+ the target as the assistant turn). `images` in the
    canonical order (source, edited); the rubric's layout places them."""
    rubric = load_pack(pack).get(row.task, row.axis, "student")
    return build_messages(rubric, images, answer=row.target if with_answer else None, **row.rubric_fields())


class SFTCollator:
    """Tokenizes rows with the processor and builds right-padded `input_ids`, `attention_mask`, `labels`,
    `pixel_values`, `image_grid_thw`. Only the assistant answer and its end-of-turn token are learned."""

    def __init__(
        self,
        processor: Any,
        dataset: SFTDataset,
        *,
        max_pixels: int | None = None,
        pack: str | RubricPack | None = None,
        max_seq_len: int | None = None,
    ):
        self.processor = processor
        self.max_seq_len = max_seq_len
        self.pack = load_pack(pack)
        self.dataset = dataset
        self.max_pixels = max_pixels
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.end_id = tok.convert_tokens_to_ids("<|im_end|>")

    def load_images(self, row: CriticSFTRow) -> list[Any]:
        from firm.critic.images import fit_pixels, load_image

        images = [
            load_image(self.dataset.image_ref(ref), name=f"{ref} (row {row.id}, {row.axis})")
            for ref in row.images
        ]
        if self.max_pixels:
            images = [fit_pixels(im, self.max_pixels) for im in images]
        return images

    def encode(self, row: CriticSFTRow) -> dict[str, torch.Tensor]:
        """One row → unpadded tensors; labels are -100 except on the answer tokens and the closing <|im_end|>."""
        rubric = self.pack.get(row.task, row.axis, "student")
        images = encode_images(rubric, self.load_images(row))
        messages = row_messages(row, images, pack=self.pack)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        enc = self.processor(text=[text], images=message_images(messages), return_tensors="pt")
        ids = enc["input_ids"][0]
        if self.max_seq_len is not None and len(ids) > self.max_seq_len:
            raise InputError(
                f"row {row.id} ({row.axis}): {len(ids)} tokens (prompt, images and answer) exceed "
                f"data.max_seq_len={self.max_seq_len}; raise it, or lower model.max_pixels"
            )
        answer_ids = self.processor.tokenizer(row.target, add_special_tokens=False)["input_ids"]
        # The answer is followed by <|im_end|> and the template's trailing newline(s): find the last <|im_end|>.
        ends = (ids == self.end_id).nonzero().flatten().tolist()
        if not ends:
            raise InputError(f"row {row.id}: chat template produced no <|im_end|> after the answer")
        end = ends[-1]
        start = end - len(answer_ids)
        if start < 0 or ids[start:end].tolist() != list(answer_ids):
            raise InputError(
                f"row {row.id} ({row.axis}): the target does not tokenize identically inside the chat template; "
                "cannot locate the assistant response for the loss mask"
            )
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[start : end + 1] = ids[start : end + 1]
        item = {
            "input_ids": ids,
            "labels": labels,
            "pixel_values": enc["pixel_values"],
            "image_grid_thw": enc["image_grid_thw"],
        }
        if "mm_token_type_ids" in enc:  # Qwen3-VL's M-RoPE needs to know which tokens are image tokens
            item["mm_token_type_ids"] = enc["mm_token_type_ids"][0]
        return item

    def __call__(self, rows: Sequence[CriticSFTRow]) -> dict[str, torch.Tensor]:
        items = [self.encode(r) for r in rows]
        n = max(len(it["input_ids"]) for it in items)
        input_ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(items), n), dtype=torch.long)
        mm_types = torch.zeros((len(items), n), dtype=torch.long) if "mm_token_type_ids" in items[0] else None
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            input_ids[i, :k] = it["input_ids"]
            labels[i, :k] = it["labels"]
            attention[i, :k] = 1
            if mm_types is not None:
                mm_types[i, :k] = it["mm_token_type_ids"]
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "pixel_values": torch.cat([it["pixel_values"] for it in items]),
            "image_grid_thw": torch.cat([it["image_grid_thw"] for it in items]),
        }
        if mm_types is not None:
            batch["mm_token_type_ids"] = mm_types
        return batch


def pack_by_image_count(
    rows: Sequence[CriticSFTRow], micro_batch: int, *, seed: int, epoch: int
) -> list[list[int]]:
    """Deterministic micro-batches of row indices for one epoch.

    Rows are shuffled with (seed, epoch), grouped by their number of images (edit rows have two, gen rows one) so
    every micro-batch has a uniform image count, cut into `micro_batch`-sized groups (incomplete tails dropped),
    and the micro-batches shuffled again. The same (rows, seed, epoch) always give the same order, which is what
    makes resumed runs see exactly the data an uninterrupted run would.
    """
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(rows)))
    rng.shuffle(order)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in order:
        groups[len(rows[i].images)].append(i)
    batches: list[list[int]] = []
    for count in sorted(groups):
        idx = groups[count]
        batches.extend(idx[k : k + micro_batch] for k in range(0, len(idx) - micro_batch + 1, micro_batch))
    rng.shuffle(batches)
    return batches
