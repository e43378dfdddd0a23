"""Pickle-free files for nested training state (e.g. a DeepSpeed ZeRO optimizer's `state_dict()`).

A state is a tree of dict / list / tuple / str / int / float / bool / None / `torch.Tensor`. `save_state` writes ONE
safetensors file: the tensors as safetensors entries and the tree as JSON in the file's metadata, each tensor replaced
by a reference to its entry. `load_state` reads it back. Nothing else is accepted: any other type (an object, an enum,
a namedtuple, a dict key that is not str/int) raises `StateCodecError` when saving, and any JSON node the codec did not
write raises when loading, so reading a state file never constructs an object or runs code.

JSON forms: a list is a JSON array; `{"$tuple": [...]}`, `{"$dict": [[key, value], ...]}` (keeps int keys, e.g. the
optimizer's per-parameter state), `{"$tensor": "<entry>"}`, `{"$float": "nan" | "inf" | "-inf"}`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from firm.errors import FirmError

FORMAT = "firm-state-v1"
_META_KEY = "firm_state"
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class StateCodecError(FirmError):
    """A state that cannot be written or read without pickling."""


def encode_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree, tensors by entry name) for `state`; `StateCodecError` names the first unsupported node."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def enc(obj: Any, where: str) -> Any:
        kind = type(obj)
        if obj is None or kind in (bool, int, str):
            return obj
        if kind is float:
            if math.isfinite(obj):
                return obj
            return {"$float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
        if kind is list:
            return [enc(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if kind is tuple:
            return {"$tuple": [enc(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if kind is dict:
            items = []
            for k, v in obj.items():
                if type(k) not in (str, int):
                    raise StateCodecError(f"{where}: dict key {k!r} ({type(k).__name__}) is not str or int")
                items.append([k, enc(v, f"{where}[{k!r}]")])
            return {"$dict": items}
        if isinstance(obj, torch.Tensor) and kind in (torch.Tensor, torch.nn.Parameter):
            t = obj.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages and t.numel():  # safetensors refuses shared storage: copy the second view
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            name = f"t{len(tensors)}"
            tensors[name] = t
            return {"$tensor": name}
        raise StateCodecError(
            f"{where}: {kind.__module__}.{kind.__qualname__} cannot be saved without pickling"
        )

    return enc(state, "state"), tensors


def decode_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode_state`; `StateCodecError` on any node it would not have written."""
    used: set[str] = set()

    def dec(node: Any, where: str) -> Any:
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is list:
            return [dec(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if type(node) is dict and len(node) == 1:
            ((tag, value),) = node.items()
            if tag == "$tuple" and type(value) is list:
                return tuple(dec(v, f"{where}[{i}]") for i, v in enumerate(value))
            if tag == "$dict" and type(value) is list:
                out: dict[Any, Any] = {}
                for item in value:
                    if type(item) is not list or len(item) != 2 or type(item[0]) not in (str, int):
                        raise StateCodecError(f"{where}: malformed dict item {str(item)[:80]}")
                    out[item[0]] = dec(item[1], f"{where}[{item[0]!r}]")
                return out
            if tag == "$tensor" and type(value) is str:
                if value not in tensors:
                    raise StateCodecError(
                        f"{where}: refers to tensor {value!r}, which the file does not hold"
                    )
                used.add(value)
                return tensors[value]
            if tag == "$float" and value in _FLOATS:
                return _FLOATS[value]
        raise StateCodecError(f"{where}: unexpected node {str(node)[:80]}")

    out = dec(tree, "state")
    extra = set(tensors) - used
    if extra:
        raise StateCodecError(f"{len(extra)} tensor(s) in the file are not referenced by its state tree")
    return out


def save_state(state: Any, path: str | Path) -> None:
    """Write `state` to `path` as one safetensors file (tensors + the JSON tree in its metadata)."""
    from safetensors.torch import save_file

    tree, tensors = encode_state(state)
    save_file(tensors, str(path), metadata={"format": FORMAT, _META_KEY: json.dumps(tree, allow_nan=False)})


def load_state(path: str | Path) -> Any:
    """Read a file written by `save_state` (no unpickling: safetensors tensors + a JSON tree)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own error types on a damaged file
        raise StateCodecError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT or _META_KEY not in meta:
        raise StateCodecError(f"{path}: not a FIRM state file (format {meta.get('format')!r})")
    try:
        tree = json.loads(meta[_META_KEY])
    except ValueError as exc:
        raise StateCodecError(f"{path}: invalid state tree ({exc})") from None
    try:
        return decode_state(tree, tensors)
    except StateCodecError as exc:
        raise StateCodecError(f"{path}: {exc}") from None
