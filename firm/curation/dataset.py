"""The critic SFT dataset format: written by curation, read by critic training.

A dataset is a published directory (see `firm.storage.publish_dir`)::

    dataset.json                 # DatasetInfo: format version, name, shards and row counts per split
    shards/<split>-00000.jsonl   # one CriticSFTRow per line
    images/<file>.png            # images referenced by relative path (rows may also reference file:// or s3:// URIs)
    MANIFEST.json                # sha256 of every file, written last by publish_dir

Each row is one (sample, axis) training example: the images, the instruction/prompt the student rubric is filled
with, and the exact assistant `target` text whose parsed score must equal `score`. The reader validates every row
(schema, rubric fields, image count, images readable, target parses to `score`) and reports a bad row as
`<shard>:<line>: <reason>`; `on_bad_row="reject"` raises on the first one, `"skip"` drops it and counts it — a bad
row is never silently used.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from firm.errors import InputError
from firm.schemas import AXES_BY_TASK, Axis, Record, Task

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INFO_FILE = "dataset.json"
Split = Literal["train", "val", "test"]
OnBadRow = Literal["reject", "skip"]


class CriticSFTRow(Record):
    """One critic SFT example: learn to answer `target` for (task, axis, images, instruction | prompt)."""

    id: str = Field(min_length=1)
    task: Task
    axis: Axis
    images: list[str] = Field(
        min_length=1, description="paths relative to the dataset root, or file:// / s3:// URIs"
    )
    instruction: str | None = Field(default=None, description="the editing instruction (task edit)")
    prompt: str | None = Field(default=None, description="the generation prompt (task gen, axis instruction)")
    target: str = Field(
        description="the exact assistant text to learn, in the student rubric's answer format"
    )
    score: int | list[int] = Field(description="the score `target` states (a list of three for quality)")
    split: Split = "train"

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("target must not be empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CriticSFTRow:
        if self.axis not in AXES_BY_TASK[self.task]:
            raise ValueError(f"axis {self.axis!r} does not belong to task {self.task!r}")
        from firm.rewards.rubrics import N_IMAGES

        n_images = N_IMAGES[self.task]  # fixed by the task, whatever the rubric pack
        if len(self.images) != n_images:
            raise ValueError(f"a {self.task} row needs {n_images} image(s), row has {len(self.images)}")
        if self.task == "edit" and not (self.instruction and self.instruction.strip()):
            raise ValueError("an edit row needs a non-empty instruction")
        if self.axis == "instruction" and not (self.prompt and self.prompt.strip()):
            raise ValueError("a gen instruction row needs a non-empty prompt")
        if self.axis == "quality":
            if not (isinstance(self.score, list) and len(self.score) == 3):
                raise ValueError("a quality row's score is a list of three integers")
        elif not isinstance(self.score, int):
            raise ValueError(f"a {self.axis} row's score is one integer")
        scores = self.score if isinstance(self.score, list) else [self.score]
        if any(not 1 <= s <= 5 for s in scores):
            raise ValueError(f"score {self.score} out of range 1..5")
        return self

    def rubric_fields(self) -> dict[str, str]:
        """The template fields of the student rubric (`instruction` for edits, `prompt` for gen instruction)."""
        if self.task == "edit":
            return {"instruction": self.instruction or ""}
        if self.axis == "instruction":
            return {"prompt": self.prompt or ""}
        return {}


class DatasetInfo(BaseModel):
    """`dataset.json`: what a reader needs before opening the shards."""

    format_version: int = FORMAT_VERSION
    name: str
    shards: list[str]
    rows: dict[str, int] = Field(default_factory=dict, description="row count per split")


class BadRow(BaseModel):
    """A row the reader refused: where it is and why."""

    shard: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.shard}:{self.line}: {self.reason}"


class SFTDataset(BaseModel):
    """A validated dataset: the rows that passed, where their relative image paths are rooted, what was skipped."""

    root: Path
    info: DatasetInfo
    rows: list[CriticSFTRow]
    skipped: list[BadRow] = Field(default_factory=list)

    def split(self, name: str) -> list[CriticSFTRow]:
        return [r for r in self.rows if r.split == name]

    def image_ref(self, ref: str) -> str:
        """A row image reference made loadable: URIs as they are, relative paths under the dataset root."""
        return ref if "://" in ref else str(self.root / ref)

    def counts(self) -> dict[str, int]:
        c = Counter(r.split for r in self.rows)
        return {**dict(c), "skipped": len(self.skipped)}


def check_target(row: CriticSFTRow) -> str | None:
    """Why `row.target` is unusable (does not parse in the rubric's format, or states another score), else None."""
    from firm.rewards.parsing import parse_answer
    from firm.rewards.rubrics import ANSWER_FORMAT

    fmt = ANSWER_FORMAT[row.axis]  # fixed by the axis, whatever the rubric pack
    result = parse_answer(fmt, row.target)
    if result.status != "ok":
        return f"target does not parse as a {fmt} answer ({result.status})"
    if result.score != row.score:
        return f"target states score {result.score} but the row's score is {row.score}"
    return None


def _check_image(root: Path, ref: str) -> str | None:
    from PIL import Image, UnidentifiedImageError

    if "://" in ref:
        return None  # remote images are checked when loaded (firm.images.load_image)
    path = root / ref
    if not path.is_file():
        return f"image {ref!r} not found"
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"image {ref!r} is corrupt or not an image ({exc.__class__.__name__})"
    return None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc + ': ' if loc else ''}{err.get('msg')}"


def read_sft_dataset(
    uri_or_path: str | Path,
    *,
    splits: Sequence[str] | None = None,
    on_bad_row: OnBadRow = "reject",
    check_images: bool = True,
) -> SFTDataset:
    """Open and validate a critic SFT dataset (a local directory, or a published `file://` / `s3://` URI).

    Every row is checked; with `on_bad_row="reject"` the first bad row raises `InputError` naming `shard:line`,
    with `"skip"` bad rows are dropped and listed in `SFTDataset.skipped` (and logged with their count).
    """
    if on_bad_row not in ("reject", "skip"):
        raise InputError(f"on_bad_row must be 'reject' or 'skip', got {on_bad_row!r}")
    from firm.storage import resolve_local

    root = Path(resolve_local(uri_or_path))
    info_path = root / INFO_FILE
    if not info_path.is_file():
        raise InputError(f"{uri_or_path}: not a critic SFT dataset (no {INFO_FILE})")
    try:
        info = DatasetInfo.model_validate_json(info_path.read_text())
    except ValidationError as exc:
        raise InputError(f"{uri_or_path}/{INFO_FILE}: {_first_error(exc)}") from None
    if info.format_version != FORMAT_VERSION:
        raise InputError(
            f"{uri_or_path}: dataset format {info.format_version} is not supported ({FORMAT_VERSION})"
        )

    rows: list[CriticSFTRow] = []
    skipped: list[BadRow] = []
    seen: set[tuple[str, str]] = set()
    for shard in info.shards:
        path = root / shard
        if not path.is_file():
            raise InputError(f"{uri_or_path}: shard {shard} listed in {INFO_FILE} is missing")
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                reason: str | None = None
                row: CriticSFTRow | None = None
                try:
                    row = CriticSFTRow.model_validate(json.loads(line))
                except json.JSONDecodeError as exc:
                    reason = f"invalid JSON ({exc.msg})"
                except ValidationError as exc:
                    reason = _first_error(exc)
                if row is not None and splits is not None and row.split not in splits:
                    continue
                if row is not None:
                    key = (row.id, row.axis)
                    if key in seen:
                        reason = f"duplicate row id {row.id!r} for axis {row.axis}"
                    else:
                        reason = check_target(row)
                    if reason is None and check_images:
                        for ref in row.images:
                            reason = _check_image(root, ref)
                            if reason:
                                break
                if reason is not None:
                    bad = BadRow(shard=shard, line=lineno, reason=reason)
                    if on_bad_row == "reject":
                        raise InputError(
                            f"{uri_or_path}: bad row at {bad} (use on_bad_row=skip to drop bad rows)"
                        )
                    skipped.append(bad)
                    continue
                assert row is not None
                seen.add((row.id, row.axis))
                rows.append(row)
    if skipped:
        log.warning("%s: skipped %d bad row(s), first: %s", uri_or_path, len(skipped), skipped[0])
    return SFTDataset(root=root, info=info, rows=rows, skipped=skipped)


class SFTDatasetWriter:
    """Builds a dataset in a private directory: `add_image` stores an image, `add(row)` appends the row to its
    split's current shard file (a new shard every `shard_size` rows: rows are streamed to disk, never held in
    memory); `finish()` closes the shards, writes `dataset.json` and, given a URI, publishes the directory
    atomically (`publish_dir`: files first, MANIFEST last). Nothing is visible at the URI before `finish` publishes;
    without a URI the directory is the result (`dataset.json`, which readers need, is written last)."""

    def __init__(self, name: str, local_dir: str | Path | None = None, shard_size: int = 10_000):
        if shard_size < 1:
            raise InputError(f"shard_size must be >= 1, got {shard_size}")
        self.name = name
        self.shard_size = shard_size
        self._tmp = None if local_dir is not None else tempfile.TemporaryDirectory(prefix="firm-sft-")
        self.dir = Path(local_dir) if local_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        (self.dir / "images").mkdir(parents=True, exist_ok=True)
        (self.dir / "shards").mkdir(exist_ok=True)
        self._counts: dict[str, int] = {}
        self._open: dict[str, Any] = {}  # split -> the open shard file
        self._image_names: set[str] = set()

    def has_image(self, name: str) -> bool:
        return f"images/{name}" in self._image_names

    def add_image(self, name: str, image: Any) -> str:
        """Store an image (PIL image or encoded bytes) under images/<name>; returns its relative path."""
        if "/" in name or name.startswith("."):
            raise InputError(f"image name {name!r} must be a plain file name")
        rel = f"images/{name}"
        if rel in self._image_names:
            return rel
        dest = self.dir / rel
        if isinstance(image, bytes | bytearray):
            dest.write_bytes(bytes(image))
        else:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            dest.write_bytes(buf.getvalue())
        self._image_names.add(rel)
        return rel

    @staticmethod
    def _shard(split: str, index: int) -> str:
        return f"shards/{split}-{index:05d}.jsonl"

    def add(self, row: CriticSFTRow) -> None:
        """Add a validated row (its images already stored with `add_image` or given as URIs)."""
        reason = check_target(row)
        if reason:
            raise InputError(f"row {row.id} ({row.axis}): {reason}")
        for ref in row.images:
            if "://" not in ref and ref not in self._image_names and not (self.dir / ref).is_file():
                raise InputError(f"row {row.id}: image {ref!r} was not added to the dataset")
        n = self._counts.get(row.split, 0)
        if n % self.shard_size == 0:  # the split's first row, or its current shard is full
            if row.split in self._open:
                self._open.pop(row.split).close()
            self._open[row.split] = (self.dir / self._shard(row.split, n // self.shard_size)).open(
                "w", encoding="utf-8"
            )
        self._open[row.split].write(row.model_dump_json(exclude_none=True) + "\n")
        self._counts[row.split] = n + 1

    def _close_shards(self) -> None:
        for fh in self._open.values():
            fh.close()
        self._open.clear()

    def finish(self, uri: str | None = None, producer: str = "firm.curation.dataset") -> Path | str:
        """Close the shards and write `dataset.json`; publish to `uri` when given (returns the URI), else return
        the dir."""
        self._close_shards()
        shards = [
            self._shard(split, k)
            for split in sorted(self._counts)
            for k in range(-(-self._counts[split] // self.shard_size))
        ]
        info = DatasetInfo(name=self.name, shards=shards, rows=dict(self._counts))
        (self.dir / INFO_FILE).write_text(info.model_dump_json(indent=2))
        if uri is None:
            return self.dir
        from firm.storage import publish_dir

        publish_dir(self.dir, uri, producer=producer)
        return uri

    def close(self) -> None:
        self._close_shards()
        if self._tmp is not None:
            self._tmp.cleanup()


def write_sft_dataset(
    name: str,
    items: Iterable[tuple[CriticSFTRow, dict[str, Any]]],
    out: str | Path,
    *,
    shard_size: int = 10_000,
) -> Path | str:
    """Write rows with their images (`{relative_name: PIL image or bytes}`) to a local dir or publish to a URI."""
    is_remote = isinstance(out, str) and "://" in out
    writer = SFTDatasetWriter(name, None if is_remote else out, shard_size=shard_size)
    try:
        for row, images in items:
            for fname, img in images.items():
                writer.add_image(fname, img)
            writer.add(row)
        return writer.finish(str(out) if is_remote else None)
    finally:
        writer.close()
