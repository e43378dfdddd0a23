"""Shared machinery of FIRM's python-backend models: config parameters, per-request input validation, metrics.

Imported only inside the Triton python-backend stub (where `triton_python_backend_utils` exists). The validation
helpers themselves are plain functions on numpy arrays so they are unit-testable outside Triton.

Batch handling: Triton hands `execute` a list of requests (dynamic batching merged them). Each request is decoded
and validated on its own; one that fails gets its own INVALID_ARGUMENT error response while the remaining requests
are scored together in one batched critic call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from firm.errors import InputError
from firm.images import load_image

DEFAULT_MAX_DECODE_PIXELS = 16_000_000  # header-checked before decoding; ~48 MB as RGB
MAX_TEXT_BYTES = 16_384
MAX_ASPECT_RATIO = 200  # the critic's resize rule (firm.images.fit_pixels) refuses anything longer


@dataclass(frozen=True)
class ModelParams:
    """The `parameters` block of a FIRM model's config.pbtxt (written by `firmctl serve export`)."""

    raw: dict[str, str]
    repository: Path

    def get(self, key: str, default: str | None = None) -> str:
        v = self.raw.get(key, default)
        if v is None:
            raise InputError(f"model config parameter {key!r} is missing")
        return v

    def get_int(self, key: str, default: int) -> int:
        return int(self.raw.get(key, default))

    def get_float(self, key: str, default: float) -> float:
        return float(self.raw.get(key, default))

    def get_bool(self, key: str, default: bool) -> bool:
        return str(self.raw.get(key, str(default))).lower() in ("1", "true", "yes", "on")

    def location(self, key: str) -> str:
        """A path relative to the repository root (copied in), else the reference as written."""
        ref = self.get(key)
        if "://" not in ref and not ref.startswith("/") and (self.repository / ref).exists():
            return str(self.repository / ref)
        return ref

    @property
    def critic_location(self) -> str:
        """The critic's weights: copied into the repository, or the referenced URI / HF id."""
        return self.location("critic")

    @property
    def rubrics_location(self) -> str | None:
        """The rubric pack copied into the repository (None in repositories exported before packs: firm-v1)."""
        return self.location("rubrics") if "rubrics" in self.raw else None


def parse_args(args: dict[str, Any]) -> tuple[dict[str, Any], ModelParams]:
    """Triton's `initialize(args)` → (model config dict, parameters). The repository root is the model dir's parent."""
    config = json.loads(args["model_config"])
    params = {}
    for k, v in (config.get("parameters") or {}).items():
        params[str(k)] = str(v.get("string_value", "")) if isinstance(v, dict) else str(v)
    repo = Path(args["model_repository"]).resolve().parent
    return config, ModelParams(params, repo)


# -- per-request validation -------------------------------------------------------------------------------------


def rows_of(name: str, arr: np.ndarray | None, expect_cols: int | None = 1) -> np.ndarray:
    """Check a BYTES input of shape [batch, cols] and return it as a 2-D object array."""
    if arr is None:
        raise InputError(f"input {name!r} is missing")
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise InputError(
            f"input {name!r} must have shape [batch, {expect_cols or 'n'}], got {list(arr.shape)}"
        )
    if expect_cols is not None and arr.shape[1] != expect_cols:
        raise InputError(f"input {name!r} must have shape [batch, {expect_cols}], got {list(arr.shape)}")
    if arr.dtype != np.object_:
        raise InputError(f"input {name!r} must be BYTES, got {arr.dtype}")
    return arr


def decode_text(value: Any, what: str, *, allow_empty: bool = False) -> str:
    """UTF-8 bytes → str; empty (unless allowed), non-UTF-8 or over-long text raises `InputError`."""
    if not isinstance(value, bytes | bytearray):
        raise InputError(f"{what} must be UTF-8 bytes, got {type(value).__name__}")
    if len(value) > MAX_TEXT_BYTES:
        raise InputError(f"{what} is {len(value)} bytes; the limit is {MAX_TEXT_BYTES}")
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    if not allow_empty and not text.strip():
        raise InputError(f"{what} must not be empty")
    return text


def decode_image(value: Any, what: str, max_decode_pixels: int) -> Image.Image:
    """Encoded PNG/JPEG/… bytes → RGB PIL image, bounded by the decode pixel budget (clear `InputError` otherwise)."""
    if not isinstance(value, bytes | bytearray):
        raise InputError(f"{what} must be encoded image bytes, got {type(value).__name__}")
    img = load_image(bytes(value), name=what, max_decode_pixels=max_decode_pixels)
    w, h = img.size
    if (
        max(w, h) / min(w, h) > MAX_ASPECT_RATIO
    ):  # fit_pixels would refuse it mid-batch, without the input's name
        raise InputError(
            f"{what}: {w}x{h} has an aspect ratio above {MAX_ASPECT_RATIO}, which cannot be judged"
        )
    return img


def f32(values: Sequence[float | None], cols: int = 1) -> np.ndarray:
    """[n] or [n, cols] values (None → NaN) as a float32 [n, cols] array."""
    out = np.full((len(values), cols), np.nan, dtype=np.float32)
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, list | tuple):
            for j, x in enumerate(v[:cols]):
                out[i, j] = np.nan if x is None else float(x)
        else:
            out[i, 0] = float(v)
    return out


def bytes_col(values: Sequence[str]) -> np.ndarray:
    return np.array([[v.encode("utf-8")] for v in values], dtype=np.object_)


# -- metrics ----------------------------------------------------------------------------------------------------

REWARD_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


class Metrics:
    """FIRM's custom Prometheus metrics, exported by Triton's metrics endpoint next to its own:

    - `firm_parse_failures_total{model, axis, status}` — judgements whose answer did not parse;
    - `firm_invalid_requests_total{model}` — requests rejected with INVALID_ARGUMENT;
    - `firm_judgements_total{model, axis}` — judgements produced;
    - `firm_reward{model}` — histogram of rewards (Triton 2.51's python backend supports HISTOGRAM).
    """

    def __init__(self, pb_utils: Any, model: str) -> None:
        mf = pb_utils.MetricFamily
        self.model = model
        self._parse = mf(
            name="firm_parse_failures_total", description="critic answers that did not parse", kind=mf.COUNTER
        )
        self._invalid = mf(
            name="firm_invalid_requests_total", description="requests rejected as invalid", kind=mf.COUNTER
        )
        self._judged = mf(
            name="firm_judgements_total", description="critic judgements produced", kind=mf.COUNTER
        )
        self._reward = mf(name="firm_reward", description="reward values returned", kind=mf.HISTOGRAM)
        self._cache: dict[tuple[str, ...], Any] = {}
        self._reward_metric = self._reward.Metric(labels={"model": model}, buckets=REWARD_BUCKETS)
        self._invalid_metric = self._invalid.Metric(labels={"model": model})

    def _counter(self, family: Any, **labels: str) -> Any:
        key = (id(family), *sorted(labels.items()))  # type: ignore[arg-type]
        if key not in self._cache:
            self._cache[key] = family.Metric(labels={"model": self.model, **labels})
        return self._cache[key]

    def judged(self, axis: str, status: str) -> None:
        self._counter(self._judged, axis=axis).increment(1)
        if status != "ok":
            self._counter(self._parse, axis=axis, status=status).increment(1)

    def invalid(self) -> None:
        self._invalid_metric.increment(1)

    def reward(self, value: float | None) -> None:
        if value is not None and not math.isnan(value):
            self._reward_metric.observe(float(value))
