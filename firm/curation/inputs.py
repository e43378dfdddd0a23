"""Curation inputs: JSONL manifests of edit pairs or generations, their images, and near-duplicate keys.

A manifest is a JSONL file (a local path or a `file://` / `s3://` URI), one item per line:

    {"id": "e1", "source": "img/a.png", "edited": "img/a-edit.png", "instruction": "make the sky orange"}   # edits
    {"id": "g1", "prompt": "a red bicycle", "image": "gen/1.png"}                                          # gen

`id` is optional (default: a hash of the item's fields). Image references are paths relative to the manifest's
directory, absolute paths, or `file://` / `s3://` URIs. Lines are read one at a time (a local manifest is streamed).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from firm.errors import FirmError, InputError

Kind = Literal["edit", "gen"]
FIELDS: dict[str, tuple[str, ...]] = {"edit": ("source", "edited", "instruction"), "gen": ("image", "prompt")}


class ManifestItem(BaseModel):
    """One manifest line: its id, image references and text (instruction or prompt); `problem` when unusable."""

    model_config = ConfigDict(frozen=True)

    line: int
    id: str
    images: tuple[str, ...]
    text: str
    problem: str | None = None
    extra: dict[str, Any] = {}


def _base(uri: str) -> tuple[str, bool]:
    """(the manifest's directory as a path or URI prefix, whether it is a URI)."""
    if "://" in uri and not uri.startswith("file://"):
        return uri.rsplit("/", 1)[0], True
    path = Path(uri.removeprefix("file://")) if uri.startswith("file://") else Path(uri)
    return str(path.parent), False


def _lines(uri: str) -> Iterator[str]:
    if "://" in uri and not uri.startswith("file://"):
        from firm.storage import read_bytes

        try:
            data = read_bytes(uri)
        except FirmError as exc:
            raise InputError(f"manifest {uri}: {exc}") from None
        yield from io.StringIO(data.decode("utf-8"))
        return
    path = Path(uri.removeprefix("file://")) if uri.startswith("file://") else Path(uri)
    if not path.is_file():
        raise InputError(f"manifest {uri}: no such file")
    with path.open(encoding="utf-8") as fh:
        yield from fh


def item_id(kind: Kind, images: tuple[str, ...], text: str) -> str:
    blob = json.dumps([kind, list(images), text])
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def read_manifest(uri: str, kind: Kind) -> Iterator[ManifestItem]:
    """Manifest items in order; a malformed line is an item with `problem` set (counted by the caller)."""
    base, is_uri = _base(uri)
    img_fields, text_field = FIELDS[kind][:-1], FIELDS[kind][-1]
    for lineno, line in enumerate(_lines(uri), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            yield ManifestItem(line=lineno, id=f"line-{lineno}", images=(), text="", problem="bad_json")
            continue
        if not isinstance(obj, dict):
            yield ManifestItem(line=lineno, id=f"line-{lineno}", images=(), text="", problem="bad_json")
            continue
        refs = tuple(str(obj.get(f) or "") for f in img_fields)
        text = str(obj.get(text_field) or "")
        resolved = tuple(_resolve(r, base, is_uri) if r else "" for r in refs)
        iid = str(obj.get("id") or item_id(kind, refs, text))
        problem = None
        if not all(refs):
            problem = "missing_image"
        elif not text.strip():
            problem = "empty_instruction" if kind == "edit" else "empty_prompt"
        extra = {k: v for k, v in obj.items() if k not in (*FIELDS[kind], "id")}
        yield ManifestItem(
            line=lineno, id=iid, images=resolved, text=text.strip(), problem=problem, extra=extra
        )


def _resolve(ref: str, base: str, is_uri: bool) -> str:
    if "://" in ref or Path(ref).is_absolute():
        return ref
    return f"{base}/{ref}" if is_uri else str(Path(base) / ref)


class LoadedImage(BaseModel):
    """An image's bytes (copied into the dataset), decoded RGB image, and the sha256 of its bytes."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    ref: str
    data: bytes
    image: Any
    sha256: str
    ext: str


def read_image_bytes(ref: str) -> bytes:
    """The bytes of one image reference, undecoded; raises `InputError` starting with `missing_image`."""
    try:
        if "://" in ref:
            from firm.storage import read_bytes

            return read_bytes(ref)
        return Path(ref).read_bytes()
    except (FirmError, OSError) as exc:
        raise InputError(f"missing_image: {ref}: {exc}") from None


def load_item_image(ref: str) -> LoadedImage:
    """Read and decode one image; raises `InputError` whose message starts with `missing_image` or
    `unreadable_image` (the drop reason)."""
    from firm.images import load_image

    data = read_image_bytes(ref)
    try:
        img = load_image(data, name=ref)
    except InputError as exc:
        raise InputError(f"unreadable_image: {exc}") from None
    from PIL import Image

    with Image.open(io.BytesIO(data)) as probe:  # the decoded copy may have been converted to RGB
        fmt = (probe.format or "png").lower()
    ext = {"jpeg": ".jpg"}.get(fmt, f".{fmt}")
    return LoadedImage(ref=ref, data=data, image=img, sha256=hashlib.sha256(data).hexdigest(), ext=ext)


_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, Unicode NFKC, punctuation dropped, whitespace collapsed: near-identical instructions agree."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", t)).strip()


def dedupe_key(image_digests: list[str], text: str) -> str:
    """Near-duplicate key: the images' byte digests and the normalised instruction/prompt."""
    return hashlib.sha256(json.dumps([image_digests, normalize_text(text)]).encode()).hexdigest()
