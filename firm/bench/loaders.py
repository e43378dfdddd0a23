"""Reading and writing FIRM-Bench: our JSONL layout, published datasets, and the public FIRM-Bench release.

Our layout (a directory, published to the object store with `firm.storage.publish_dir`)::

    bench/
      bench.jsonl      one `BenchItem` per line (id, task, axis, difficulty, images, instruction|prompt, human_score)
      human.jsonl      the same items as `HumanScore` rows (what `firmctl bench score --human` reads)
      images/...       image files; `BenchItem.images` are paths relative to the bench directory
      MANIFEST.json    written by publish_dir (sha256 of every file)

The importer `import_firm_release` converts the public release (Hugging Face dataset `VisionXLab/FIRM-Bench`) into
this layout. Release layout, per task directory (`FIRM-Bench-Edit/`, `FIRM-Bench-Gen/`)::

    bench_v1.jsonl                 inputs, one row per item
    result/human_bench_v1.jsonl    the same ids with the human scores
    <image folders>/...            images, referenced by relative paths from the task directory

Field mapping (see `RELEASE_FIELDS`). Verified against the release's own scorer (`FIRM-Bench-Gen/gen_mae.py`):
gen rows have `id`, `image: [path]`, the human score in `instruction_following.score[0]`, and the difficulty is the
image folder: `en/...` = easy, `en_long/...` = hard. NOT verifiable offline and therefore ASSUMED (the edit scorer
`edit_mae.py` and the rows themselves were not readable from here): edit rows carry `image: [source, edited]`, the
instruction in `instruction` (or `prompt`), and the human score of an axis under `execution` / `consistency` as
`{"score": [k]}` (a bare `k` or `[k]` is accepted too); a row may also name its axis in `axis`/`dimension` with the
score in `score`. The gen prompt is read from `prompt` (or `instruction`/`caption`). An edit row scored on both axes
becomes two items `<id>:execution` and `<id>:consistency`; single-axis edit rows also get the `:<axis>` suffix so
ids are stable whatever the row holds. Anything unmapped is an `InputError` naming file:line.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from pydantic import BaseModel, ValidationError

from firm.bench.records import BenchItem, HumanScore
from firm.errors import InputError
from firm.storage.base import atomic_path

BENCH_FILE = "bench.jsonl"
HUMAN_FILE = "human.jsonl"

M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------------------------------------- JSONL
def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a malformed line is an `InputError` naming file:line."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    with p.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    msg = str(first.get("msg", "invalid"))
    return f"{loc}: {msg}" if loc else msg


def read_records(path: str | Path, model: type[M], *, unique_ids: bool = True) -> list[M]:
    """Validate every row of a JSONL file as `model`; errors name file:line; duplicate ids are rejected."""
    out: list[M] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        try:
            rec = model.model_validate(obj)
        except ValidationError as exc:
            raise InputError(f"{path}:{lineno}: {validation_message(exc)}") from None
        rid = getattr(rec, "id", None)
        if unique_ids and rid is not None:
            if rid in seen:
                raise InputError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {seen[rid]})")
            seen[rid] = lineno
        out.append(rec)
    return out


def write_records(path: str | Path, records: Iterable[BaseModel]) -> Path:
    """Write records as JSONL atomically (temp file in the same directory, then rename)."""
    p = Path(path)
    with atomic_path(p) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(r.model_dump_json(exclude_none=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return p


# ----------------------------------------------------------------------------------------------------------- Bench
@dataclass
class Bench:
    """A loaded bench: its directory and items. Image references resolve relative to `root`."""

    root: Path
    items: list[BenchItem]

    def image_path(self, ref: str) -> Path | str:
        if "://" in ref:
            return ref  # a file:// or s3:// URI, read through the object store
        p = Path(ref)
        return p if p.is_absolute() else self.root / p

    def open_images(self, item: BenchItem) -> list[Image.Image]:
        """The item's images as RGB PIL images (`firm.images.load_image`: clear `InputError` when unusable)."""
        from firm.images import load_image

        return [load_image(self.image_path(ref), name=f"bench item {item.id}: {ref}") for ref in item.images]

    def humans(self) -> list[HumanScore]:
        return [it.human() for it in self.items]


def write_bench(out_dir: str | Path, items: Sequence[BenchItem]) -> Path:
    """Write `bench.jsonl` and `human.jsonl` into `out_dir` (images must already be there)."""
    out = Path(out_dir)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"bench {out}: duplicate item ids {dup[:10]}")
    write_records(out / BENCH_FILE, items)
    write_records(out / HUMAN_FILE, [it.human() for it in items])
    return out


def load_bench(uri_or_path: str | Path) -> Bench:
    """Load a bench from a local directory (or its `bench.jsonl`), or a published `file://`/`s3://` dataset URI."""
    s = str(uri_or_path)
    if "://" in s:
        from firm.storage import resolve_local

        root = Path(resolve_local(s))
    else:
        root = Path(s).expanduser()
    if root.is_file():
        root, path = root.parent, root
    else:
        path = root / BENCH_FILE
    if not path.exists():
        raise InputError(f"bench {uri_or_path}: no {BENCH_FILE} in {root}")
    items = read_records(path, BenchItem)
    if not items:
        raise InputError(f"bench {uri_or_path}: {path} holds no items")
    return Bench(root=root.resolve(), items=items)


def publish_bench(local_dir: str | Path, uri: str) -> Any:
    """Publish a bench directory as a dataset (`firm.storage.publish_dir`, MANIFEST last); returns the manifest."""
    from firm.storage import publish_dir

    load_bench(local_dir)  # validate before publishing
    return publish_dir(local_dir, uri, producer="firm.bench")


# ------------------------------------------------------------------------------------------- FIRM release importer
RELEASE_TASK_DIRS: dict[str, str] = {"edit": "FIRM-Bench-Edit", "gen": "FIRM-Bench-Gen"}
RELEASE_INPUTS = "bench_v1.jsonl"
RELEASE_HUMAN = "result/human_bench_v1.jsonl"
RELEASE_FIELDS: dict[str, dict[str, Any]] = {
    "gen": {
        "id": "id",
        "images": "image",  # list with one relative path; en/ = easy, en_long/ = hard (verified, gen_mae.py)
        "text": ("prompt", "instruction", "caption"),  # first present wins (assumed)
        "score": ("instruction_following", "score", 0),  # verified, gen_mae.py
        "difficulty_by_folder": {"en": "easy", "en_long": "hard"},
    },
    "edit": {
        "id": "id",
        "images": "image",  # [source, edited] (assumed)
        "text": ("instruction", "prompt", "edit_instruction"),  # (assumed)
        "axis_keys": ("execution", "consistency"),  # {"score": [k]} per axis (assumed)
        "axis_field": ("axis", "dimension"),  # alternative: named axis + "score" (assumed)
    },
}


def _first(row: dict[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        if row.get(k) not in (None, ""):
            return row[k]
    return None


def _as_score(value: Any, where: str) -> int:
    v = value
    if isinstance(v, dict):
        v = v.get("score")
    if isinstance(v, list):
        v = v[0] if v else None
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
        raise InputError(f"{where}: human score must be an integer 1..5, got {value!r}")
    if not 1 <= int(v) <= 5:
        raise InputError(f"{where}: human score {int(v)} outside 1..5")
    return int(v)


def _images(row: dict[str, Any], where: str) -> list[str]:
    imgs = row.get("image", row.get("images"))
    if isinstance(imgs, str):
        imgs = [imgs]
    if not isinstance(imgs, list) or not all(isinstance(x, str) for x in imgs):
        raise InputError(f"{where}: expected 'image' to be a list of relative paths, got {imgs!r}")
    return imgs


def _gen_difficulty(path: str, where: str) -> str:
    folder = Path(path).parts[0] if Path(path).parts else ""
    diff = RELEASE_FIELDS["gen"]["difficulty_by_folder"].get(folder)
    if diff is None:
        raise InputError(
            f"{where}: cannot tell easy/hard from image path {path!r} (expected en/... or en_long/...)"
        )
    return diff


def _edit_scores(row: dict[str, Any], where: str) -> dict[str, int]:
    spec = RELEASE_FIELDS["edit"]
    scores = {ax: _as_score(row[ax], where) for ax in spec["axis_keys"] if row.get(ax) is not None}
    if not scores:
        axis = _first(row, spec["axis_field"])
        if axis in spec["axis_keys"] and row.get("score") is not None:
            scores[axis] = _as_score(row["score"], where)
    if not scores:
        raise InputError(f"{where}: no human score found (expected 'execution'/'consistency' with a score)")
    return scores


def _index(path: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for lineno, row in iter_jsonl(path):
        rid = row.get("id")
        if rid is None or str(rid) == "":
            raise InputError(f"{path}:{lineno}: row has no 'id'")
        rid = str(rid)
        if rid in out:
            raise InputError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {out[rid][0]})")
        out[rid] = (lineno, row)
    return out


def import_firm_release(release_root: str | Path, out_dir: str | Path, *, copy_images: bool = True) -> Bench:
    """Convert the public FIRM-Bench release at `release_root` into our layout in `out_dir`.

    Reads each task directory that exists; every human-scored id must have an input row (and vice versa) and every
    referenced image must exist. Images are copied to `out_dir/images/<task>/...` (or referenced in place when
    `copy_images=False`).
    """
    root = Path(release_root)
    out = Path(out_dir)
    items: list[BenchItem] = []
    found = False
    for task, dirname in RELEASE_TASK_DIRS.items():
        tdir = root / dirname
        if not tdir.is_dir():
            continue
        found = True
        inputs_path, human_path = tdir / RELEASE_INPUTS, tdir / RELEASE_HUMAN
        inputs, humans = _index(inputs_path), _index(human_path)
        missing_h, missing_i = sorted(set(inputs) - set(humans)), sorted(set(humans) - set(inputs))
        if missing_h or missing_i:
            raise InputError(
                f"{dirname}: ids differ between {RELEASE_INPUTS} and {RELEASE_HUMAN}: "
                f"without human score {missing_h[:10]}, without inputs {missing_i[:10]}"
            )
        for rid, (lineno, row) in inputs.items():
            where = f"{inputs_path}:{lineno}"
            hline, hrow = humans[rid]
            hwhere = f"{human_path}:{hline}"
            refs = _images(row, where)
            text = _first(row, RELEASE_FIELDS[task]["text"])
            if not isinstance(text, str) or not text.strip():
                keys = "/".join(RELEASE_FIELDS[task]["text"])
                raise InputError(f"{where}: no {keys} text")
            for ref in refs:
                if not (tdir / ref).is_file():
                    raise InputError(f"{where}: image {tdir / ref} does not exist")
            stored = [f"images/{task}/{ref}" if copy_images else str((tdir / ref).resolve()) for ref in refs]
            if copy_images:
                for ref, dst in zip(refs, stored, strict=True):
                    (out / dst).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(tdir / ref, out / dst)
            try:
                if task == "gen":
                    score = _as_score(_dig(hrow, RELEASE_FIELDS["gen"]["score"], hwhere), hwhere)
                    items.append(
                        BenchItem(
                            id=rid,
                            task="gen",
                            axis="instruction",
                            difficulty=_gen_difficulty(refs[0], where),
                            images=stored,
                            prompt=text,
                            human_score=score,
                            source="firm-bench-v1",
                        )
                    )
                else:
                    for axis, score in _edit_scores(hrow, hwhere).items():
                        items.append(
                            BenchItem(
                                id=f"{rid}:{axis}",
                                task="edit",
                                axis=axis,
                                images=stored,
                                instruction=text,
                                human_score=score,
                                source="firm-bench-v1",
                            )
                        )
            except ValidationError as exc:
                raise InputError(f"{where}: {validation_message(exc)}") from None
    if not found:
        raise InputError(
            f"{root}: no {' or '.join(RELEASE_TASK_DIRS.values())} directory (not a FIRM-Bench release)"
        )
    write_bench(out, items)
    return Bench(root=out.resolve(), items=items)


def _dig(row: dict[str, Any], path: Sequence[Any], where: str) -> Any:
    cur: Any = row
    for key in path:
        try:
            cur = cur[key]
        except (KeyError, IndexError, TypeError):
            dotted = ".".join(str(k) for k in path)
            raise InputError(f"{where}: missing human score field {dotted}") from None
    return cur
