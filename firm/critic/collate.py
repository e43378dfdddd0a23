"""Turn critic SFT rows into model batches: chat messages with the STUDENT rubric plus the assistant target,
labels that mask everything but the assistant response, micro-batches grouped by image count (unpacked runs), and
each row's tokenized size measured without decoding its images (`SFTCollator.measure`, for `firm.critic.packing`).

The prompt is laid out by `firm.critic.messages.build_messages` — the same function the `Critic` uses at inference,
so training and serving see identical prompts. The images are prepared as the `Critic` prepares them: loaded, passed
through the rubric's codec, fitted once by `firm.critic.critic.rubric_pixel_rule` (the model processor's factor and
bounds, the rubric's bounds, an explicit budget) and handed to the processor with that rule's `size`, so the batch's
`pixel_values` / `image_grid_thw` are the serving path's for the same image (tests/sft/test_image_rule.py).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from firm.critic.critic import rubric_pixel_rule
from firm.critic.messages import build_messages, encode_images, message_images
from firm.curation.dataset import CriticSFTRow, SFTDataset
from firm.errors import InputError
from firm.rewards.rubrics import RubricPack
from firm.rubric_store import load_pack

if TYPE_CHECKING:
    from firm.critic.packing import RowSize
    from firm.images import PixelRule

IGNORE_INDEX = -100


class _Size:
    """An image reduced to its size: what the pixel rule and the chat template need to know of it."""

    def __init__(self, w: int, h: int):
        self.w, self.h = int(w), int(h)
        self.size = (self.w, self.h)


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
    `pixel_values`, `image_grid_thw`. Only the assistant answer and its end-of-turn token are learned.

    `max_pixels`: an explicit per-image budget for every rubric, as `Critic(max_pixels=...)` takes it; None (what
    `firm.critic.sft` passes) leaves the bounds to the rubric, else to the processor, into which the SFT run has
    written its recipe's `model.min_pixels` / `model.max_pixels` (and which the export saves for serving)."""

    def __init__(
        self,
        processor: Any,
        dataset: SFTDataset,
        *,
        max_pixels: int | None = None,
        pack: str | RubricPack | None = None,
        max_seq_len: int | None = None,
        cache_bytes: int = 0,
    ):
        self.processor = processor
        self.max_seq_len = max_seq_len
        # encoded rows by id, kept while they fit in `cache_bytes` (first come, first kept: an epoch revisits every
        # row, so which rows are kept does not matter); encoding is deterministic, so a hit equals a fresh encode
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self.pack = load_pack(pack)
        self.dataset = dataset
        self.max_pixels = max_pixels
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.end_id = tok.convert_tokens_to_ids("<|im_end|>")

    def pixel_rule(self, row: CriticSFTRow) -> PixelRule:
        """How this row's images are sized: `rubric_pixel_rule` for the row's student rubric (the `Critic`'s)."""
        return rubric_pixel_rule(
            self.processor, self.pack.get(row.task, row.axis, "student"), self.max_pixels
        )

    def load_images(self, row: CriticSFTRow) -> list[Any]:
        """The row's images as the critic sees them, in the `Critic`'s order: loaded, through the rubric's codec,
        then fitted by the pixel rule."""
        from firm.images import load_image

        rubric = self.pack.get(row.task, row.axis, "student")
        rule = self.pixel_rule(row)
        images = [
            load_image(self.dataset.image_ref(ref), name=f"{ref} (row {row.id}, {row.axis})")
            for ref in row.images
        ]
        return [rule.fit(im) for im in encode_images(rubric, images)]

    def encode(self, row: CriticSFTRow) -> dict[str, torch.Tensor]:
        """One row → unpadded tensors; labels are -100 except on the answer tokens and the closing <|im_end|>."""
        messages = row_messages(row, self.load_images(row), pack=self.pack)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        enc = self.processor(
            text=[text],
            images=message_images(messages),
            return_tensors="pt",
            size=self.pixel_rule(row).processor_size(),  # the images are fitted: no second resize
        )
        ids = enc["input_ids"][0]
        self._check_length(row, len(ids))
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

    def _check_length(self, row: CriticSFTRow, n: int) -> None:
        if self.max_seq_len is not None and n > self.max_seq_len:
            raise InputError(
                f"row {row.id} ({row.axis}): {n} tokens (prompt, images and answer) exceed "
                f"data.max_seq_len={self.max_seq_len}; raise it, or lower model.max_pixels"
            )

    def measure(self, rows: Sequence[CriticSFTRow]) -> list[RowSize]:
        """Each row's tokenized size — what `encode` would produce — without decoding an image: the prompt is
        rendered with placeholder images and tokenized, and each image contributes the image tokens the row's pixel
        rule gives its header size (as `load_images` fits it). Checks `data.max_seq_len` like `encode`.
        tests/sft/test_packing.py checks it against `encode`."""
        from firm.critic.packing import RowSize

        tok = self.processor.tokenizer
        out: list[RowSize] = []
        for k in range(0, len(rows), 256):  # tokenize in chunks: bounded memory, the fast tokenizer batches
            chunk = rows[k : k + 256]
            texts, extra = [], []
            for row in chunk:
                sizes = [self._image_size(row, ref) for ref in row.images]
                messages = row_messages(row, sizes, pack=self.pack)
                texts.append(
                    self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
                )
                # each image's single <|image_pad|> placeholder expands to its image tokens
                rule = self.pixel_rule(row)
                extra.append(sum(rule.image_tokens(im.w, im.h) - 1 for im in sizes))
            ids = tok(texts)["input_ids"]
            answers = tok([r.target for r in chunk], add_special_tokens=False)["input_ids"]
            for row, text_ids, n_extra, answer in zip(chunk, ids, extra, answers, strict=True):
                n = len(text_ids) + n_extra
                self._check_length(row, n)
                out.append(RowSize(tokens=n, labels=len(answer) + 1))  # + the closing <|im_end|>
        return out

    def _image_size(self, row: CriticSFTRow, ref: str) -> _Size:
        """The image's own size, from its header only (decoded when it is a URI)."""
        from firm.images import load_image

        name = f"{ref} (row {row.id}, {row.axis})"
        src = self.dataset.image_ref(ref)
        size: tuple[int, int] | None = None
        if "://" not in src:
            from PIL import Image

            try:
                with Image.open(src) as im:
                    size = im.size
            except (OSError, ValueError, Image.DecompressionBombError):
                size = None  # load_image below raises the clear InputError
        if size is None:
            size = load_image(src, name=name).size
        return _Size(*size)

    def encode_cached(self, row: CriticSFTRow) -> dict[str, torch.Tensor]:
        """`encode(row)`, from the cache when the row was encoded before (see `cache_bytes`)."""
        key = f"{row.split}/{row.id}/{row.axis}"  # unique within a dataset (firm.curation.dataset)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        item = self.encode(row)
        size = sum(t.numel() * t.element_size() for t in item.values())
        if self.cached_bytes + size <= self.cache_bytes:
            self._cache[key] = item
            self.cached_bytes += size
        return item

    def __call__(self, rows: Sequence[CriticSFTRow]) -> dict[str, torch.Tensor]:
        items = [self.encode_cached(r) for r in rows]
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
