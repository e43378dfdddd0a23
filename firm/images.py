"""Loading the images a critic judges: bytes, paths, `file://`/`s3://` URIs or PIL images → bounded RGB PIL images.

A low module shared by the critic, curation, bench, RL and serving (`firm.serving.encoding`, the Triton backend):
stdlib and PIL only — no torch or transformers —, and the object store only when a URI is read.

Two budgets keep memory bounded:
- `max_decode_pixels`: a header-only check before decoding (like `Image.MAX_IMAGE_PIXELS`, but a clear
  `InputError` instead of a warning); images above it are refused rather than decoded.
- `fit_pixels(img, max_pixels, factor)`: images above the model's pixel budget are resized (aspect kept, sides
  multiples of `factor` = patch × merge) before they reach the processor.

`pixel_rule` is THE resize rule of a critic's images, used by critic SFT (`firm.critic.collate`, and its token
measurement), the in-training eval and every serving path (`firm.critic.Critic`, the Triton backends, the vLLM
engine, the bench's local critic): one `PixelRule` (factor, min pixels, max pixels) read from the model's own
image processor (`patch_size × merge_size`; `size.shortest_edge` / `size.longest_edge`, into which transformers 5
folds a config's legacy `min_pixels` / `max_pixels`) and overridden by the rubric's bounds and an explicit budget —
no factor or bound is a constant here. Images are fitted once with `PixelRule.fit`, and the processor is called
with `PixelRule.processor_size()`, under which a fitted image is a fixed point of its own resize: it is never
resized twice and never enlarged to a default minimum.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from firm.errors import ConfigError, FirmError, InputError

DEFAULT_MAX_DECODE_PIXELS = 64_000_000  # ~8000×8000; a decoded RGB image of this size is ~190 MB
ImageSource = Image.Image | bytes | bytearray | str | Path


def _describe(src: Any, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, bytes | bytearray):
        return f"image <{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"image <PIL {src.size[0]}x{src.size[1]}>"
    return f"image {src}"


def _read_source(src: str | Path, label: str) -> bytes:
    text = str(src)
    if "://" in text:
        try:
            from firm.storage import read_bytes  # the object store (file:// and s3://)
        except ImportError:
            read_bytes = None
        if read_bytes is not None:
            try:
                return read_bytes(text)
            except FirmError as exc:
                raise InputError(f"{label}: {exc}") from exc
        if not text.startswith("file://"):
            raise InputError(
                f"{label}: cannot read {text.split('://')[0]}:// URIs (object store unavailable)"
            )
        from urllib.parse import unquote, urlsplit

        text = unquote(urlsplit(text).path)
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"{label}: no such file")
    if not path.is_file():
        raise InputError(f"{label}: not a file")
    return path.read_bytes()


def load_image(
    src: ImageSource,
    *,
    name: str | None = None,
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS,
) -> Image.Image:
    """Open `src` as an RGB PIL image; `name` labels it in error messages (default: "image <path/URI>").

    Raises `InputError` for missing files, non-image data, zero-size images, images whose header announces more
    than `max_decode_pixels` pixels, and truncated/corrupt image data.
    """
    label = _describe(src, name)
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, bytes | bytearray):
            data = bytes(src)
        elif isinstance(src, str | Path):
            data = _read_source(src, label)
        else:
            raise InputError(f"{label}: unsupported image source type {type(src).__name__}")
        if not data:
            raise InputError(f"{label}: empty file (0 bytes)")
        try:
            with warnings.catch_warnings():  # our own budget below replaces PIL's bomb warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise InputError(f"{label}: not an image file (unrecognised format)") from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"{label}: unreadable image: {exc}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputError(f"{label}: zero-size image ({w}x{h})")
    if w * h > max_decode_pixels:
        raise InputError(
            f"{label}: {w}x{h} = {w * h} pixels exceeds the decode budget of {max_decode_pixels} pixels"
        )
    try:
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{label}: unreadable image data: {exc}") from None


def target_size(width: int, height: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) of an image after Qwen-VL's `smart_resize` rule: both sides multiples of `factor`, the area
    within [`min_pixels`, `max_pixels`], the aspect ratio kept as closely as those allow."""
    w, h = int(width), int(height)
    if max(w, h) / max(min(w, h), 1) > 200:
        raise InputError(f"image {w}x{h}: aspect ratio above 200 cannot be judged")
    new_h = max(factor, round(h / factor) * factor)
    new_w = max(factor, round(w / factor) * factor)
    if new_h * new_w > max_pixels:
        beta = math.sqrt((h * w) / max_pixels)
        new_h = max(factor, math.floor(h / beta / factor) * factor)
        new_w = max(factor, math.floor(w / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        new_h = math.ceil(h * beta / factor) * factor
        new_w = math.ceil(w * beta / factor) * factor
    return new_w, new_h


def fit_pixels(img: Image.Image, max_pixels: int, factor: int, min_pixels: int | None = None) -> Image.Image:
    """Resize `img` so that width×height ≤ `max_pixels` and both sides are multiples of `factor` (the processor's
    patch × merge size), keeping the aspect ratio as closely as possible (Qwen-VL's `smart_resize` rule). Images
    already within budget with aligned sides are returned unchanged; `min_pixels` (default factor²) enlarges tiny
    images. Prefer `PixelRule.fit`, whose factor and bounds come from the model's processor."""
    if max_pixels < factor * factor:
        raise InputError(f"max_pixels={max_pixels} is below one {factor}x{factor} patch")
    min_pixels = factor * factor if min_pixels is None else min_pixels
    new_w, new_h = target_size(img.size[0], img.size[1], factor, min_pixels, max_pixels)
    if (new_w, new_h) == tuple(img.size):
        return img
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class PixelRule:
    """How a critic's images are sized: sides multiples of `factor` (patch × merge), area in
    [`min_pixels`, `max_pixels`]. Build it with `pixel_rule`; never from constants."""

    factor: int
    min_pixels: int
    max_pixels: int

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of this size is judged at."""
        return target_size(width, height, self.factor, self.min_pixels, self.max_pixels)

    def fit(self, img: Image.Image) -> Image.Image:
        """`img` resized to `size(*img.size)` (unchanged when it already is)."""
        return fit_pixels(img, self.max_pixels, self.factor, min_pixels=self.min_pixels)

    def image_tokens(self, width: int, height: int) -> int:
        """Image tokens the model sees for an image of this size (one per factor × factor cell)."""
        w, h = self.size(width, height)
        return (w // self.factor) * (h // self.factor)

    def processor_size(self) -> dict[str, int]:
        """The processor's `size` argument for images fitted by this rule: they pass through unchanged."""
        return {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}


def _field(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def processor_pixel_rule(processor: Any) -> PixelRule:
    """The rule of a Qwen-VL-style processor (or its `image_processor`) as its own config gives it: factor =
    `patch_size × merge_size`; bounds = `size.shortest_edge` / `size.longest_edge` (transformers 5's Qwen2-VL image
    processors, which serve Qwen2-VL, Qwen2.5-VL and Qwen3-VL, fold a config's `min_pixels` / `max_pixels` into
    them), else `size.min_pixels` / `size.max_pixels`, else `min_pixels` / `max_pixels` attributes (older
    transformers). Raises `ConfigError` when the processor states no patch/merge size or no bounds."""
    ip = getattr(processor, "image_processor", None) or processor
    patch, merge = getattr(ip, "patch_size", None), getattr(ip, "merge_size", None)
    name = type(ip).__name__
    if not patch or not merge:
        raise ConfigError(f"image processor {name} states no patch_size/merge_size (not a Qwen-VL processor)")
    size = getattr(ip, "size", None)
    lo = _field(size, "shortest_edge") or _field(size, "min_pixels") or getattr(ip, "min_pixels", None)
    hi = _field(size, "longest_edge") or _field(size, "max_pixels") or getattr(ip, "max_pixels", None)
    if not lo or not hi:
        raise ConfigError(
            f"image processor {name} states no pixel bounds (size.shortest_edge/longest_edge or "
            "min_pixels/max_pixels)"
        )
    return PixelRule(factor=int(patch) * int(merge), min_pixels=int(lo), max_pixels=int(hi))


def pixel_rule(
    processor: Any,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    budget: int | None = None,
) -> PixelRule:
    """THE resize rule for one rubric's images (see the module docstring), from the model's processor:

    - factor: the processor's `patch_size × merge_size`;
    - upper bound: `budget` (an explicit per-image budget for every rubric), else `max_pixels` (the rubric's),
      else the processor's `size.longest_edge` — which a critic trained by FIRM carries from its recipe's
      `model.max_pixels`, so serving it needs no flag to see images as it was trained;
    - lower bound: `min_pixels` (the rubric's), else the processor's `size.shortest_edge`;
    - the bounds are never below one factor × factor cell, and the lower never above the upper.

    Raises `ConfigError` for a `budget` below one cell.
    """
    base = processor_pixel_rule(processor)
    cell = base.factor**2
    if budget is not None and budget < cell:
        raise ConfigError(f"max_pixels={budget} is below one {base.factor}x{base.factor} patch")
    hi = max(budget or max_pixels or base.max_pixels, cell)
    lo = max(cell, min(min_pixels or base.min_pixels, hi))
    return PixelRule(factor=base.factor, min_pixels=lo, max_pixels=hi)
