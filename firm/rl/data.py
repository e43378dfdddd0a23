"""RL prompt sets: `.txt` (one prompt per line) or `.jsonl` (`{"prompt"|"instruction": ..., "image": src}`).

Validation is strict and names file:line: empty prompts, duplicates and over-long prompts are rejected, and every
editing source image must exist (local path or object-store URI, checked up front so a missing one fails before any
training; an image that exists but does not decode fails when it is first used, naming the image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firm.errors import InputError
from firm.schemas import Task

if TYPE_CHECKING:
    import torch


@dataclass
class PromptItem:
    prompt: str
    source: str | None = None  # source image (editing)


def _read_text(uri: str) -> tuple[str, str]:
    if uri.startswith(("s3://", "file://")):
        from firm.storage import read_bytes

        return uri, read_bytes(uri).decode("utf-8")
    p = Path(uri).expanduser()
    if not p.exists():
        raise InputError(f"{uri}: prompt file does not exist")
    return str(p), p.read_text(encoding="utf-8")


def load_prompts(uri: str, task: Task, max_chars: int = 1000) -> list[PromptItem]:
    name, text = _read_text(uri)
    items: list[PromptItem] = []
    seen: dict[tuple[str, str | None], int] = {}
    is_jsonl = name.endswith(".jsonl")
    base = Path(name).parent if "://" not in name else None
    for lineno, line in enumerate(text.splitlines(), start=1):
        where = f"{name}:{lineno}"
        if is_jsonl:
            if not line.strip():
                continue
            try:
                rec: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: invalid JSON: {exc.msg}") from exc
            if not isinstance(rec, dict):
                raise InputError(f"{where}: expected a JSON object")
            prompt = rec.get("prompt", rec.get("instruction"))
            source = rec.get("image", rec.get("source_image"))
            if not isinstance(prompt, str):
                raise InputError(f"{where}: missing 'prompt' (or 'instruction')")
        else:
            prompt, source = line, None
        prompt = prompt.strip()
        if not prompt:
            raise InputError(f"{where}: empty prompt")
        if len(prompt) > max_chars:
            raise InputError(f"{where}: prompt is {len(prompt)} characters, over the limit of {max_chars}")
        if task == "edit":
            if not source:
                raise InputError(f"{where}: editing prompts need a source 'image'")
            if "://" not in source and base is not None and not Path(source).is_absolute():
                source = str(base / source)
            if "://" not in source and not Path(source).exists():
                raise InputError(f"{where}: source image {source} does not exist")
            if "://" in source and not _object_exists(source):
                raise InputError(f"{where}: source image {source} does not exist in the object store")
        key = (prompt, source)
        if key in seen:
            raise InputError(f"{where}: duplicate prompt (first at line {seen[key]}): {prompt[:60]!r}")
        seen[key] = lineno
        items.append(PromptItem(prompt, source if task == "edit" else None))
    if not items:
        raise InputError(f"{name}: no prompts")
    return items


def _object_exists(uri: str) -> bool:
    from firm.storage import open_store

    store, key = open_store(uri)
    return store.exists(key)


def square_source(image: Any, size: int) -> Any:
    """A PIL image centre-cropped to its short side and resized to size × size with LANCZOS, as the official editing
    trainers' datasets prepare a source (`PromptImageDataset.__getitem__` in FIRM-Reward's
    `train_nft_qwen_image_edit.py` and `train_nft_kontext.py`)."""
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def load_source(src: str, size: int) -> torch.Tensor:
    """A source image as [3, size, size] in [0, 1]: centre-cropped to a square and resized with LANCZOS
    (`square_source`), never squashed."""
    import torch

    from firm.images import load_image

    img = square_source(load_image(src).convert("RGB"), size)
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(size, size, 3)
    return t.permute(2, 0, 1).float() / 255.0


def step_prompts(n_items: int, step: int, seed: int, per_step: int, rank: int, world: int) -> list[int]:
    """The prompt indices this rank rolls out at `step`: a deterministic function of (seed, step), split over ranks."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    reps = -(-per_step // n_items)
    order = torch.cat([torch.randperm(n_items, generator=g) for _ in range(reps)])[:per_step].tolist()
    return order[rank::world]
