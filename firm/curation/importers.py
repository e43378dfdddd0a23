"""Importers for the released FIRM curation data → FIRM's critic SFT dataset format, streaming.

What is confirmed about the release (read on the Hugging Face hub pages of VisionXLab): the editing data is published
as two datasets, `VisionXLab/FIRM-Edit-Instruction` (execution; ~190k rows, one `train` split) and
`VisionXLab/FIRM-Edit-Consistency` (consistency), both parquet with image and text columns; together they are the
paper's FIRM-Edit-370K. FIRM-Gen-293K is the paper's generation (instruction-following) data.

What is ASSUMED (the column names were not visible; check them against your copy and pass `field_map` otherwise):
the columns in `EDIT_FIELDS` / `GEN_FIELDS` below — the first candidate present in a row is used. Images are either
Hugging Face `Image` cells (`{"bytes": ..., "path": ...}`), paths relative to the source file's directory, or
URIs. The answer's score is read with FIRM's parser; a row whose answer does not parse is dropped and counted.
The axis of an edit row comes from an `axis` column when present, else from the source's name (`Instruction` →
execution, `Consistency` → consistency), else from `default_axis`.

Sources: a `.jsonl` file, a `.parquet` file (`pyarrow`: read one row group at a time, in record batches of
`PARQUET_BATCH_ROWS`), or a directory of them.
Rows are read one at a time and written as they come: the release is never loaded into memory whole.

Field mapping (FIRM field ← release columns, first present wins):

| FIRM field     | edit rows                                   | gen rows                                |
|----------------|---------------------------------------------|-----------------------------------------|
| source image   | source_image, input_image, source, images[0] | —                                      |
| edited image   | edited_image, output_image, edited, images[1] | image, images[0]                      |
| instruction    | instruction, edit_instruction, prompt       | prompt (→ `prompt`), caption            |
| answer         | response, answer, output, target, messages[assistant] | same                          |
| axis           | axis, dimension, task (else the source name) | instruction                            |
| id             | id, uid, key (else a hash of the row's position and source) | same                    |
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from firm.errors import InputError

EDIT_FIELDS: dict[str, tuple[str, ...]] = {
    "source": ("source_image", "input_image", "source"),
    "edited": ("edited_image", "output_image", "edited"),
    "text": ("instruction", "edit_instruction", "prompt"),
    "answer": ("response", "answer", "output", "target"),
    "axis": ("axis", "dimension", "task"),
    "id": ("id", "uid", "key"),
}
GEN_FIELDS: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "text": ("prompt", "caption"),
    "answer": ("response", "answer", "output", "target"),
    "id": ("id", "uid", "key"),
}
PARQUET_BATCH_ROWS = 64  # rows decoded at a time (image cells are large)
AXIS_ALIASES = {"execution": "execution", "instruction": "execution", "exec": "execution",
                "consistency": "consistency", "consist": "consistency"}  # fmt: skip


def _files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file())
        if files:
            return files
    raise InputError(f"{src}: no .jsonl or .parquet files to import")


def iter_rows(src: str | Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """(file, row number, row) for every row of the source, streamed."""
    for path in _files(Path(src)):
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError:
                            obj = None
                        yield path, n, obj if isinstance(obj, dict) else {"__bad__": True}
        else:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise InputError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
            n = 0
            pf = pq.ParquetFile(path)
            for group in range(pf.num_row_groups):  # one row group at a time, in record batches
                for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                    for row in batch.to_pylist():
                        n += 1
                        yield path, n, row


def _pick(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return None


def _answer(row: dict[str, Any], names: tuple[str, ...]) -> str | None:
    value = _pick(row, names)
    if value is None:
        msgs = row.get("messages") or row.get("conversations")
        if isinstance(msgs, list):
            for m in reversed(msgs):
                if isinstance(m, dict) and m.get("role", m.get("from")) in ("assistant", "gpt"):
                    value = m.get("content", m.get("value"))
                    break
    return value if isinstance(value, str) else None


def _image_bytes(cell: Any, base: Path) -> bytes:
    if isinstance(cell, dict):
        if cell.get("bytes"):
            data = cell["bytes"]
            return base64.b64decode(data) if isinstance(data, str) else bytes(data)
        cell = cell.get("path")
    if isinstance(cell, bytes | bytearray):
        return bytes(cell)
    if isinstance(cell, str) and cell:
        if "://" in cell:
            from firm.storage import read_bytes

            return read_bytes(cell)
        p = Path(cell) if Path(cell).is_absolute() else base / cell
        return p.read_bytes()
    raise InputError("no image")


def _ext(data: bytes) -> str:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "png").lower()
    except (UnidentifiedImageError, OSError):
        raise InputError("not an image") from None
    return ".jpg" if fmt == "jpeg" else f".{fmt}"


def _axis_of(path: Path, row: dict[str, Any], default: str | None) -> str | None:
    raw = _pick(row, EDIT_FIELDS["axis"])
    if isinstance(raw, str) and raw.lower() in AXIS_ALIASES:
        return AXIS_ALIASES[raw.lower()]
    name = str(path).lower()
    if "consistency" in name:
        return "consistency"
    if "instruction" in name or "execution" in name:
        return "execution"
    return default


def _import(src: str | Path, out: str, *, kind: str, name: str, val_fraction: float, default_axis: str | None,
            limit: int | None, overwrite: bool = False) -> tuple[str, dict[str, Any]]:  # fmt: skip
    from firm.curation.dataset import CriticSFTRow, SFTDatasetWriter
    from firm.curation.runner import WARN_DROPPED_SHARE, log
    from firm.curation.selection import split_of
    from firm.rewards.parsing import parse_answer
    from firm.storage import to_uri
    from firm.storage.targets import check_target, clear_target

    check_target(out, "--out", overwrite=overwrite)
    fields = EDIT_FIELDS if kind == "edit" else GEN_FIELDS
    uri = out if "://" in out else to_uri(Path(out).resolve())
    writer = SFTDatasetWriter(name)
    drops: Counter[str] = Counter()
    scores: dict[str, Counter[int]] = {}
    written: dict[str, Counter[str]] = {}
    seen: set[tuple[str, str]] = set()
    read = 0
    try:
        for path, n, row in iter_rows(src):
            if limit is not None and read >= limit:
                break
            read += 1
            if row.get("__bad__"):
                drops["bad_json"] += 1
                continue
            rid = str(
                _pick(row, fields["id"]) or hashlib.sha256(f"{path.name}:{n}".encode()).hexdigest()[:16]
            )
            text = _pick(row, fields["text"])
            answer = _answer(row, fields["answer"])
            axis = _axis_of(path, row, default_axis) if kind == "edit" else "instruction"
            if not isinstance(text, str) or not text.strip():
                drops["empty_instruction" if kind == "edit" else "empty_prompt"] += 1
                continue
            if axis is None:
                drops["unknown_axis"] += 1
                continue
            if answer is None:
                drops["no_answer"] += 1
                continue
            res = parse_answer("edit" if kind == "edit" else "gen", answer)
            if not res.ok:
                drops[f"answer_{res.status}"] += 1
                continue
            if (rid, axis) in seen:
                drops["duplicate_id"] += 1
                continue
            imgs = row.get("images") if isinstance(row.get("images"), list) else []
            cells = ([_pick(row, fields["source"]) or (imgs[0] if len(imgs) > 0 else None),
                      _pick(row, fields["edited"]) or (imgs[1] if len(imgs) > 1 else None)]
                     if kind == "edit" else [_pick(row, fields["image"]) or (imgs[0] if imgs else None)])  # fmt: skip
            refs = []
            try:
                for cell in cells:
                    data = _image_bytes(cell, path.parent)
                    refs.append(
                        writer.add_image(f"{hashlib.sha256(data).hexdigest()[:24]}{_ext(data)}", data)
                    )
            except (InputError, OSError):
                drops["missing_image"] += 1
                continue
            split = split_of(rid, val_fraction)
            kw = {"instruction": text.strip()} if kind == "edit" else {"prompt": text.strip()}
            try:
                writer.add(CriticSFTRow(id=rid, task=kind, axis=axis, images=refs, target=answer.strip(),  # type: ignore[arg-type]
                                        score=res.score, split=split, **kw))  # type: ignore[arg-type]  # fmt: skip
            except (InputError, ValueError):
                drops["invalid_row"] += 1
                continue
            seen.add((rid, axis))
            scores.setdefault(axis, Counter())[int(res.score)] += 1  # type: ignore[arg-type]
            written.setdefault(axis, Counter())[split] += 1
        stats = {
            "kind": f"import-firm-{kind}", "name": name, "input": str(src),
            "items": {"read": read, "dropped": dict(sorted(drops.items()))},
            "scores": {a: {str(k): c[k] for k in range(1, 6)} for a, c in scores.items()},
            "samples": {"written": {a: dict(c) for a, c in written.items()}},
            "field_map": {k: list(v) for k, v in fields.items()},
        }  # fmt: skip
        dropped = sum(drops.values())
        if not any(sum(c.values()) for c in written.values()):
            why = ", ".join(f"{k}={v}" for k, v in drops.most_common()) or "no rows"
            raise InputError(
                f"{src}: imported no rows of {read} read — dropped: {why}; nothing was published"
            )
        if dropped / read > WARN_DROPPED_SHARE:
            log.warning("import dropped %d of %d row(s): %s", dropped, read, dict(drops.most_common()))
        from firm.curation.stats import histogram_png

        (writer.dir / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
        (writer.dir / "histogram.png").write_bytes(histogram_png(stats))
        if overwrite:
            clear_target(uri)
        writer.finish(uri, producer=f"firm.curation.importers.{kind}")
    finally:
        writer.close()
    return uri, stats


def import_firm_edit(src: str | Path, out: str, *, name: str = "firm-edit-370k", val_fraction: float = 0.01,
                     default_axis: str | None = None, limit: int | None = None,
                     overwrite: bool = False) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """FIRM-Edit-370K (either or both released parts) → a critic SFT dataset at `out`; returns (URI, stats).
    An existing, non-empty `out` is refused unless `overwrite`."""
    return _import(src, out, kind="edit", name=name, val_fraction=val_fraction, default_axis=default_axis,
                   limit=limit, overwrite=overwrite)  # fmt: skip


def import_firm_gen(src: str | Path, out: str, *, name: str = "firm-gen-293k", val_fraction: float = 0.01,
                    limit: int | None = None, overwrite: bool = False) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """FIRM-Gen-293K → a critic SFT dataset (gen / instruction rows) at `out`; returns (URI, stats)."""
    return _import(src, out, kind="gen", name=name, val_fraction=val_fraction, default_axis=None, limit=limit,
                   overwrite=overwrite)  # fmt: skip
