"""Loading the images a critic judges: bytes, paths, `file://`/`s3://` URIs or PIL images → bounded RGB PIL images.

A low module shared by the critic, curation, bench, RL and serving (`firm.serving.encoding`, the Triton backend):
stdlib and PIL only — no torch or transformers —, and the object store only when a URI is read.

Two budgets keep memory bounded:
- `max_decode_pixels`: a header-only check before decoding (like `Image.MAX_IMAGE_PIXELS`, but a clear
  `InputError` instead of a warning); images above it are refused rather than decoded.
- `fit_pixels(img, max_pixels, factor)`: images above the model's pixel budget are resized (aspect kept, sides
  multiples of `factor` = patch × merge, 28 for Qwen2.5-VL-style processors) before they reach the processor.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from firm.errors import FirmError, InputError

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


def fit_pixels(
    img: Image.Image, max_pixels: int, factor: int = 28, min_pixels: int | None = None
) -> Image.Image:
    """Resize `img` so that width×height ≤ `max_pixels` and both sides are multiples of `factor`, keeping the aspect
    ratio as closely as possible (Qwen-VL's `smart_resize` rule). Images already within budget with aligned sides
    are returned unchanged; `min_pixels` (default factor²) enlarges tiny images."""
    if max_pixels < factor * factor:
        raise InputError(f"max_pixels={max_pixels} is below one {factor}x{factor} patch")
    min_pixels = factor * factor if min_pixels is None else min_pixels
    w, h = img.size
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
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)
