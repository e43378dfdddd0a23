"""The machinery both curation pipelines share (`firm.curation.edit`, `firm.curation.gen`).

A run streams the manifest and drops what cannot be used before paying a teacher (malformed lines, missing or
unreadable images, empty instructions, near-duplicates). Every other item walks the pipeline's stages on its own
(`Stages.session()` gives `run_item(prepared) -> ItemRecord`, a coroutine): up to `in_flight` items are curated at
once on one event loop, so an item's scoring starts as soon as its own report is back and the teachers always have
requests waiting (each teacher bounds its own requests in flight: `--concurrency`). One `ItemRecord` per item is
appended to a journal (`<work_dir>/items.jsonl`, flushed about once a second) as items complete. Items already in
the journal are skipped on a rerun (resume); the teacher-call cache (`firm.curation.teachers.CachedTeacher`) makes a
rerun after a crash pay for nothing twice.

Finishing: labels the teacher gave with a confidence under `min_confidence` (its probability of the score digit,
from the endpoint's logprobs: `firm.curation.confidence`) are flagged — kept, counted and listed by `id/axis` in
`stats.json`'s `teacher_confidence` — or, with `low_confidence: drop`, dropped (`low_confidence` among the samples'
drop reasons); labels without a confidence are never either. The journal's samples are then balanced per axis
(`selection.balance`), split train/val by item-id hash,
written as a critic SFT dataset (`firm.curation.dataset`, shards streamed to a private directory) with `stats.json`
and `histogram.png`, and published with `firm.storage.publish_dir` (files first, MANIFEST.json last): nothing
half-written becomes visible.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from firm.curation.inputs import (
    Kind,
    LoadedImage,
    ManifestItem,
    dedupe_key,
    load_item_image,
    read_image_bytes,
    read_manifest,
)
from firm.curation.leaks import LeakPolicy
from firm.errors import InputError

STATS_FILE = "stats.json"
HISTOGRAM_FILE = "histogram.png"
WARN_DROPPED_SHARE = 0.5  # a run that drops more than this share of its manifest's items warns (all: fails)
log = logging.getLogger("firm.curation")


class CurationConfig(BaseModel):
    """What both pipelines take. Every field is checked at the boundary (a bad one fails naming the field)."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, description="JSONL manifest: a local path or file:// / s3:// URI")
    out: str = Field(min_length=1, description="where the dataset is published: a local dir or a URI")
    name: str = Field(default="curated", min_length=1, description="the dataset's name (dataset.json)")
    rubrics: str | None = Field(default=None, description="rubric pack for stage 2 (None: firm-v1)")
    val_fraction: float = Field(default=0.01, ge=0.0, lt=1.0, description="held-out share, by item-id hash")
    leak_policy: LeakPolicy = Field(default="clean", description="rationales that mention the report/plan")
    balance: dict[str, str | dict[int, float]] = Field(
        default_factory=dict, description="axis -> target score distribution (preset name or score:weight)"
    )
    cache: str | None = Field(
        default=None, description="teacher-call cache URI (None: <datasets>/teacher-cache; 'off': none)"
    )
    work_dir: str | None = Field(
        default=None, description="journal dir (None: $FIRM_HOME/curation/<run hash>)"
    )
    resume: bool = Field(default=True, description="skip items already in the journal")
    overwrite: bool = Field(default=False, description="replace an existing, non-empty dataset at `out`")
    in_flight: int | None = Field(
        default=None, ge=1, le=100_000,
        description="items curated at once (None: twice the largest teacher concurrency, at least 16)",
    )  # fmt: skip
    limit: int | None = Field(default=None, ge=1, description="only the first N manifest items")
    seed: int = 0
    progress: bool = True
    low_confidence: Literal["flag", "drop"] = Field(
        default="flag",
        description="labels the teacher gave with confidence under `min_confidence` (from its logprobs, where "
        "the endpoint returns them): flag (kept, counted and listed in stats.json) or drop",
    )
    min_confidence: float = Field(
        default=0.5, ge=0.0, le=1.0, description="the teacher's probability of the score digit it wrote"
    )


class Sample(BaseModel):
    """One (item, axis) training sample as the journal keeps it."""

    id: str
    axis: str
    score: int
    target: str
    text: str = Field(description="the instruction (edit) or prompt (gen) the student sees")
    rewritten: bool = False
    confidence: float | None = Field(
        default=None, description="the teacher's probability of its score digit (None: no logprobs)"
    )


class ItemRecord(BaseModel):
    """What happened to one manifest item."""

    id: str
    dropped: str | None = None
    images: list[str] = Field(default_factory=list, description="image references (re-read when writing)")
    image_names: list[str] = Field(default_factory=list)
    dedupe: str | None = None
    samples: list[Sample] = Field(default_factory=list)
    drops: dict[str, str] = Field(default_factory=dict, description="axis -> why its sample was dropped")
    notes: list[str] = Field(default_factory=list, description="leak_cleaned, leak_kept, rewritten, ...")
    teacher: dict[str, float] = Field(default_factory=dict, description="calls, cache_hits, tokens, seconds")


class Prepared(BaseModel):
    """An item that passed the input checks: its images are loaded."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    item: ManifestItem
    images: list[LoadedImage]
    dedupe: str


class CurationResult(BaseModel):
    uri: str
    stats: dict[str, Any]


def add_usage(rec: ItemRecord, ans: Any) -> None:
    """Account one teacher answer to its item."""
    t = rec.teacher
    t["calls"] = t.get("calls", 0) + 1
    t["cache_hits"] = t.get("cache_hits", 0) + int(ans.cached)
    t["prompt_tokens"] = t.get("prompt_tokens", 0) + ans.prompt_tokens
    t["completion_tokens"] = t.get("completion_tokens", 0) + ans.completion_tokens
    t["seconds"] = round(t.get("seconds", 0.0) + ans.seconds, 6)


def stage_text(rec: ItemRecord, ans: Any, stage: str) -> str | None:
    """The text of a first-stage answer (difference report, plan), accounted to its item; None with `rec.dropped`
    set (`teacher_<error>`, `empty_<stage>`) when there is nothing to build on; a cut answer is kept and noted
    (`<stage>_truncated`)."""
    add_usage(rec, ans)
    if not ans.ok:
        rec.dropped = f"teacher_{ans.error}"
        return None
    text = ans.text.strip()
    if not text:
        rec.dropped = f"empty_{stage}"
        return None
    if ans.truncated:
        rec.notes.append(f"{stage}_truncated")
    return text


def run_fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def work_dir_for(cfg: CurationConfig, fingerprint: str) -> Path:
    if cfg.work_dir:
        return Path(cfg.work_dir)
    from firm.config import get_settings

    return get_settings().home / "curation" / fingerprint


def default_cache(cfg: CurationConfig) -> str | None:
    if cfg.cache == "off":
        return None
    if cfg.cache:
        return cfg.cache
    from firm.config import get_settings

    return f"{get_settings().bucket_uris()['datasets']}/teacher-cache"


class Journal:
    """Append-only JSONL of `ItemRecord`s; a torn last line (a crash mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, ItemRecord]:
        done: dict[str, ItemRecord] = {}
        if not self.path.is_file():
            return done
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = ItemRecord.model_validate_json(line)
            except ValueError:
                continue
            done[rec.id] = rec
        return done

    def append(self, records: list[ItemRecord]) -> None:
        if not records:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(r.model_dump_json() + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())


def _prepare(item: ManifestItem, seen: set[str]) -> Prepared | ItemRecord:
    if item.problem:
        return ItemRecord(id=item.id, dropped=item.problem, images=list(item.images))
    loaded: list[LoadedImage] = []
    for ref in item.images:
        try:
            loaded.append(load_item_image(ref))
        except InputError as exc:
            return ItemRecord(id=item.id, dropped=str(exc).split(":", 1)[0], images=list(item.images))
    key = dedupe_key([im.sha256 for im in loaded], item.text)
    if key in seen:
        return ItemRecord(id=item.id, dropped="duplicate", images=list(item.images), dedupe=key)
    seen.add(key)
    return Prepared(item=item, images=loaded, dedupe=key)


def image_names(p: Prepared) -> list[str]:
    return [f"{im.sha256[:24]}{im.ext}" for im in p.images]


RunItem = Callable[[Prepared], Awaitable[ItemRecord]]


class Stages(Protocol):
    """A pipeline's teacher stages: `session()` opens the teachers on the running event loop and yields the
    coroutine that curates one prepared item."""

    def session(self) -> AbstractAsyncContextManager[RunItem]: ...


def default_in_flight(teachers: list[Any]) -> int:
    """Twice the largest teacher concurrency (an edit item holds one request during its report, two while scored),
    at least 16."""
    return max([16, *(2 * int(getattr(t, "concurrency", 0) or 0) for t in teachers)])


def run_curation(
    cfg: CurationConfig,
    kind: Kind,
    stages: Stages,
    *,
    fingerprint: dict[str, Any],
    axes: tuple[str, ...],
    meta: dict[str, Any],
    teachers: list[Any],
) -> CurationResult:
    """Drive a curation run (see the module docstring)."""
    from firm.progress import Progress

    check_out(cfg)
    fp = run_fingerprint(fingerprint)
    journal = Journal(work_dir_for(cfg, fp) / "items.jsonl")
    done = journal.load() if cfg.resume else {}
    if not cfg.resume and journal.path.exists():
        journal.path.unlink()
    t0 = time.monotonic()
    in_flight = cfg.in_flight or default_in_flight(teachers)
    with Progress(f"curate {kind} {cfg.name}", total=cfg.limit, unit="item", enabled=cfg.progress) as bar:
        order, new, resumed = asyncio.run(_drive(cfg, kind, stages, journal, done, bar, t0, in_flight))
    records = [new.get(i) or done[i] for i in order]
    return finish(
        cfg, kind, records, axes=axes, meta=meta | {"resumed_items": resumed}, teachers=teachers, t0=t0
    )


async def _drive(
    cfg: CurationConfig,
    kind: Kind,
    stages: Stages,
    journal: Journal,
    done: dict[str, ItemRecord],
    bar: Any,
    t0: float,
    in_flight: int,
) -> tuple[list[str], dict[str, ItemRecord], int]:
    """Read, prepare and curate the manifest's items, `in_flight` at a time; journal records as they complete.
    Returns (item ids in manifest order, the new records, the number of items resumed from the journal)."""
    seen = {r.dedupe for r in done.values() if r.dedupe and r.dropped != "duplicate"}
    order: list[str] = []
    ids: set[str] = set()
    new: dict[str, ItemRecord] = {}
    unjournaled: list[ItemRecord] = []
    last_flush = time.monotonic()
    resumed = 0
    running: set[asyncio.Task[ItemRecord]] = set()
    finished: list[asyncio.Task[ItemRecord]] = []  # filled by the tasks' done callbacks
    wake = asyncio.Event()

    def on_done(task: asyncio.Task[ItemRecord]) -> None:
        finished.append(task)
        wake.set()

    def record(rec: ItemRecord) -> None:
        nonlocal last_flush
        new[rec.id] = rec
        unjournaled.append(rec)
        rate = len(new) / max(time.monotonic() - t0, 1e-9)
        bar.advance(1, info=f"{rate:.3g} item/s")
        if len(unjournaled) >= in_flight or time.monotonic() - last_flush >= 1.0:
            journal.append(unjournaled)
            unjournaled.clear()
            last_flush = time.monotonic()

    async def settle(block: bool) -> None:
        """Record finished items; with `block`, wait for at least one first."""
        if block and running and not finished:
            wake.clear()
            await wake.wait()
        while finished:
            task = finished.pop()
            running.discard(task)
            record(task.result())  # a fatal teacher error (wrong key, unknown model) stops the run here

    try:
        async with stages.session() as run_item:
            for item in read_manifest(cfg.input, kind):
                if cfg.limit is not None and len(order) >= cfg.limit:
                    break
                if item.id in ids:  # a repeated id in the manifest: the later line gets its own
                    item = item.model_copy(update={"id": f"{item.id}#L{item.line}"})
                order.append(item.id)
                ids.add(item.id)
                if item.id in done:
                    resumed += 1
                    bar.advance(1)
                    continue
                prep = await asyncio.to_thread(_prepare, item, seen)  # image decoding off the event loop
                if isinstance(prep, ItemRecord):
                    record(prep)
                    continue
                while len(running) >= in_flight:
                    await settle(block=True)
                task = asyncio.create_task(run_item(prep))
                task.add_done_callback(on_done)
                running.add(task)
                await settle(block=False)
            while running:
                await settle(block=True)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        journal.append(unjournaled)  # what completed is kept for a resume, even when the run fails
    return order, new, resumed


def check_out(cfg: CurationConfig) -> None:
    """Refuse an existing, non-empty `out` unless `overwrite` (before any teacher is asked)."""
    from firm.storage.targets import check_target

    check_target(cfg.out, "--out", overwrite=cfg.overwrite)


def _reasons(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if v)


def check_yield(cfg: CurationConfig, stats: dict[str, Any]) -> None:
    """Nothing written is an error naming the drop counts by reason (an empty manifest, every line malformed,
    no readable image, a JSON array instead of JSONL); more than `WARN_DROPPED_SHARE` of the items dropped warns."""
    read = stats["items"]["read"]
    item_drops: dict[str, int] = stats["items"]["dropped"]
    samples = stats["samples"]
    rows = sum(sum(v.values()) for v in samples["written"].values())
    if rows == 0:
        if read == 0:
            raise InputError(
                f"--input {cfg.input}: the manifest has no items (empty file); nothing was published"
            )
        sample_drops: Counter[str] = Counter()
        for per_axis in samples["dropped"].values():
            sample_drops.update(per_axis)
        if samples["image_gone"]:
            sample_drops["image_gone"] += samples["image_gone"]
        for n in samples["balanced_out"].values():
            sample_drops["balanced_out"] += n
        parts = [f"items dropped: {_reasons(item_drops)}"] if item_drops else []
        parts += [f"samples dropped: {_reasons(dict(sample_drops))}"] if sample_drops else []
        hint = (
            " (the manifest is JSONL: one JSON object per line, not a JSON array)"
            if item_drops.get("bad_json") == read
            else ""
        )
        raise InputError(
            f"--input {cfg.input}: curation kept no rows of {read} item(s) — {'; '.join(parts) or 'no samples'}"
            f"{hint}; nothing was published"
        )
    dropped = sum(item_drops.values())
    if read and dropped / read > WARN_DROPPED_SHARE:
        log.warning(
            "curation dropped %d of %d item(s) (%.0f%%): %s",
            dropped,
            read,
            100 * dropped / read,
            _reasons(item_drops),
        )


def finish(
    cfg: CurationConfig,
    kind: Kind,
    records: list[ItemRecord],
    *,
    axes: tuple[str, ...],
    meta: dict[str, Any],
    teachers: list[Any],
    t0: float,
) -> CurationResult:
    """Balance, split, write and publish; returns the URI and the stats."""
    from firm.curation.dataset import CriticSFTRow, SFTDatasetWriter
    from firm.curation.selection import balance, parse_target, split_of
    from firm.curation.stats import histogram_png
    from firm.storage import to_uri

    unknown = sorted(set(cfg.balance) - set(axes))
    if unknown:
        raise InputError(
            f"balance: unknown axis {unknown[0]!r} for {kind} curation (axes: {', '.join(axes)})"
        )
    by_axis: dict[str, list[tuple[ItemRecord, Sample]]] = defaultdict(list)
    for rec in records:
        for s in rec.samples:
            by_axis[s.axis].append((rec, s))
    by_axis_all = [s for a in axes for _, s in by_axis.get(a, [])]
    before = {a: Counter(s.score for _, s in by_axis.get(a, [])) for a in axes}
    unsure = {a: [s for _, s in by_axis.get(a, []) if _unsure(cfg, s)] for a in axes}
    if cfg.low_confidence == "drop":  # before balancing: the balance is struck among the labels kept
        for axis in axes:
            by_axis[axis] = [(r, s) for r, s in by_axis.get(axis, []) if not _unsure(cfg, s)]
    balanced_out: dict[str, int] = {}
    for axis, target in cfg.balance.items():
        pairs = by_axis.get(axis, [])
        keep, drop = balance([s for _, s in pairs], parse_target(target), cfg.seed)
        by_axis[axis] = [pairs[i] for i in keep]
        balanced_out[axis] = len(drop)

    uri = cfg.out if "://" in cfg.out else to_uri(Path(cfg.out).resolve())
    writer = SFTDatasetWriter(cfg.name)
    written: dict[str, Counter[str]] = {a: Counter() for a in axes}
    final: dict[str, Counter[int]] = {a: Counter() for a in axes}
    flagged: list[str] = []
    image_gone = 0
    try:
        task = "edit" if kind == "edit" else "gen"
        for axis in axes:
            for rec, s in by_axis.get(axis, []):
                try:
                    for ref, name in zip(rec.images, rec.image_names, strict=True):
                        if not writer.has_image(name):  # checked and decoded when prepared: copy the bytes
                            writer.add_image(name, read_image_bytes(ref))
                except InputError:
                    image_gone += 1
                    continue
                split = split_of(rec.id, cfg.val_fraction, cfg.seed)
                text = {"instruction": s.text} if kind == "edit" else {"prompt": s.text}
                writer.add(
                    CriticSFTRow(
                        id=s.id, task=task, axis=axis, images=[f"images/{n}" for n in rec.image_names],  # type: ignore[arg-type]
                        target=s.target, score=s.score, split=split, **text,  # type: ignore[arg-type]
                    )
                )  # fmt: skip
                written[axis][split] += 1
                final[axis][s.score] += 1
                if _unsure(cfg, s):
                    flagged.append(f"{s.id}/{axis}")
        stats = _stats(
            cfg, kind, records, axes, before, final, written, balanced_out, image_gone, meta, teachers, t0
        )
        stats["teacher_confidence"] = _confidence_stats(cfg, by_axis_all, unsure, flagged)
        if cfg.low_confidence == "drop":
            for axis in axes:
                if unsure[axis]:
                    stats["samples"]["dropped"][axis]["low_confidence"] = len(unsure[axis])
        check_yield(cfg, stats)
        (writer.dir / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True), encoding="utf-8")
        (writer.dir / HISTOGRAM_FILE).write_bytes(histogram_png(stats))
        if cfg.overwrite:
            from firm.storage.targets import clear_target

            clear_target(uri)
        writer.finish(uri, producer=f"firm.curation.{kind}")
    finally:
        writer.close()
    return CurationResult(uri=uri, stats=stats)


def _unsure(cfg: CurationConfig, s: Sample) -> bool:
    """A label the teacher gave with a confidence under `min_confidence` (none: never)."""
    return s.confidence is not None and s.confidence < cfg.min_confidence


MAX_FLAGGED_IDS = 1000


def _confidence_stats(
    cfg: CurationConfig, samples: list[Sample], unsure: dict[str, list[Sample]], flagged: list[str]
) -> dict[str, Any]:
    """`stats.json`'s `teacher_confidence`: how many labels had one, how sure the teacher was, and what the policy
    did with those under the threshold (`flagged`: written rows, their `id/axis` listed; `dropped`)."""
    known = [s.confidence for s in samples if s.confidence is not None]
    below = sum(len(v) for v in unsure.values())
    return {
        "policy": cfg.low_confidence,
        "min_confidence": cfg.min_confidence,
        "with_confidence": len(known),
        "without_confidence": len(samples) - len(known),
        "mean": round(sum(known) / len(known), 6) if known else None,
        "below": below,
        "flagged": len(flagged),
        "dropped": below if cfg.low_confidence == "drop" else 0,
        "flagged_ids": flagged[:MAX_FLAGGED_IDS],
    }


def _stats(
    cfg: CurationConfig,
    kind: str,
    records: list[ItemRecord],
    axes: tuple[str, ...],
    before: dict[str, Counter[int]],
    final: dict[str, Counter[int]],
    written: dict[str, Counter[str]],
    balanced_out: dict[str, int],
    image_gone: int,
    meta: dict[str, Any],
    teachers: list[Any],
    t0: float,
) -> dict[str, Any]:
    item_drops = Counter(r.dropped for r in records if r.dropped)
    axis_drops = {a: Counter(r.drops[a] for r in records if a in r.drops) for a in axes}
    notes = Counter(n for r in records for n in r.notes)
    usage: Counter[str] = Counter()
    for r in records:
        usage.update(r.teacher)
    this_run = {
        getattr(t, "name", "?"): {
            "cache_hits": getattr(t, "hits", 0),
            "cache_misses": getattr(t, "misses", 0),
        }
        for t in teachers
    }
    return {
        "kind": kind,
        "name": cfg.name,
        "input": cfg.input,
        **meta,
        "items": {"read": len(records), "dropped": dict(sorted(item_drops.items()))},
        "samples": {
            "scored": {a: sum(before[a].values()) for a in axes},
            "dropped": {a: dict(sorted(axis_drops[a].items())) for a in axes},
            "balanced_out": balanced_out,
            "image_gone": image_gone,
            "written": {a: dict(sorted(written[a].items())) for a in axes},
        },
        "scores_before_balance": {a: {str(k): before[a][k] for k in range(1, 6)} for a in axes},
        "scores": {a: {str(k): final[a][k] for k in range(1, 6)} for a in axes},
        "leaks": {
            "policy": cfg.leak_policy,
            "cleaned": notes["leak_cleaned"],
            "dropped": sum(axis_drops[a]["leak_dropped"] + axis_drops[a]["leak_uncleanable"] for a in axes),
            "kept": notes["leak_kept"],
        },
        "notes": dict(sorted(notes.items())),
        "teacher": {
            "calls": int(usage["calls"]),
            "cache_hits": int(usage["cache_hits"]),
            "prompt_tokens": int(usage["prompt_tokens"]),
            "completion_tokens": int(usage["completion_tokens"]),
            "seconds": round(float(usage["seconds"]), 3),
            "this_run": this_run,
        },
        "val_fraction": cfg.val_fraction,
        "balance": {a: str(t) for a, t in cfg.balance.items()},
        "wall_seconds": round(time.monotonic() - t0, 3),
    }
