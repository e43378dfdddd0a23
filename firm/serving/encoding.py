"""Client-side image encoding: PIL images, torch tensors, numpy arrays, paths/URIs or bytes → PNG/JPEG bytes.

Nothing but encoded image bytes crosses the wire (no pickle). Tensors follow torchvision's convention: CHW (or HWC
numpy), float in [0, 1] or uint8 in [0, 255]; 1 or 3 channels.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from firm.errors import InputError
from firm.images import load_image

ImageFormat = Literal["png", "jpeg"]
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def _to_pil(arr: np.ndarray, what: str) -> Image.Image:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise InputError(f"{what}: expected an image array of 2 or 3 dims, got shape {list(arr.shape)}")
    if arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):  # CHW → HWC
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[-1] not in (1, 3):
        raise InputError(f"{what}: expected 1 or 3 channels, got shape {list(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{what}: zero-size image {list(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{what}: image contains NaN or inf")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def encode_image(img: Any, fmt: ImageFormat = "png", *, quality: int = 95, what: str = "image") -> bytes:
    """Encoded image bytes for the wire. PNG/JPEG bytes and files are passed through unchanged."""
    if isinstance(img, bytes | bytearray):
        if not img:
            raise InputError(f"{what}: empty bytes")
        return bytes(img)
    if isinstance(img, str | Path):
        text = str(img)
        if "://" in text:
            from firm.storage import read_bytes

            data = read_bytes(text)
        else:
            p = Path(text).expanduser()
            if not p.is_file():
                raise InputError(f"{what}: no such file {text}")
            data = p.read_bytes()
        if data.startswith(_MAGIC):
            return data
        img = load_image(data, name=f"{what} ({text})")
    if not isinstance(img, Image.Image):
        if hasattr(img, "detach") and hasattr(img, "cpu"):  # torch.Tensor, without importing torch
            img = img.detach().cpu()
            if str(getattr(img, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
                img = img.float()
            img = img.numpy()
        if isinstance(img, np.ndarray):
            img = _to_pil(img, what)
        else:
            raise InputError(
                f"{what}: cannot encode {type(img).__name__} (PIL image, tensor, array, path or bytes)"
            )
    if img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=1)  # fast; the server decodes either
    return buf.getvalue()
