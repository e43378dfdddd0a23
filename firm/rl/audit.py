"""The critic audit of an RL run: a held-out FIRM-Bench slice scored through the run's own reward, and its gallery.

The audit set is a FIRM-Bench directory or published dataset (`bench.jsonl`, the layout of `firm.bench.loaders`:
`{id, task, axis, images, instruction|prompt, human_score}` per line, images relative to the bench directory);
`audit.max_items` of the run's task are used. Items that share their inputs (an edit scored on execution and on
consistency) are sent once: the reward of one (source, edited, instruction) carries both axes. The critic's score of
an item is its raw 1–5 score on the item's axis (`raw_scores`, else 1 + 4 × the normalised sub-score); an axis without
a score is a parse failure. Logged per audit: `audit/mae` (over the parsed items), `audit/parse_failure_rate`,
`audit/confidence_mean` (the axis's confidence, where the reward has one), `audit/n` and `time/audit`.

`gallery_html` renders one audit: each item's images, the critic's rationale and scores next to the human score, and
the rollout samples the alarms flagged.
"""

from __future__ import annotations

import html
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firm.errors import InputError
from firm.schemas import RewardBreakdown, Task

if TYPE_CHECKING:
    import torch

AUDIT_BATCH = 8  # items per reward call
THUMB_PX = 160  # gallery thumbnails (longest side)


@dataclass
class AuditItem:
    id: str
    axis: str
    human: int
    text: str
    images: list[str]  # resolved paths or URIs


@dataclass
class AuditSet:
    task: Task
    items: list[AuditItem]
    source: str

    def inputs(self) -> dict[tuple[str, ...], list[AuditItem]]:
        """Items grouped by what the critic is shown (images + text): one reward call each."""
        out: dict[tuple[str, ...], list[AuditItem]] = {}
        for it in self.items:
            out.setdefault((*it.images, it.text), []).append(it)
        return out


def load_audit_set(uri: str, task: Task, max_items: int) -> AuditSet:
    """The first `max_items` items of `task` in the bench at `uri`; an unusable bench is an `InputError` naming it."""
    from firm.storage import resolve_local

    root = Path(resolve_local(uri)) if "://" in uri else Path(uri).expanduser()
    path = root if root.is_file() else root / "bench.jsonl"
    root = path.parent
    if not path.exists():
        raise InputError(f"audit.bench={uri}: no bench.jsonl (a FIRM-Bench directory or dataset URI)")
    items: list[AuditItem] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or len(items) >= max_items:
            continue
        try:
            row = json.loads(line)
            if row["task"] != task:
                continue
            text = row.get("instruction") if task == "edit" else row.get("prompt")
            imgs = [r if "://" in r or Path(r).is_absolute() else str(root / r) for r in row["images"]]
            if not text or len(imgs) != (2 if task == "edit" else 1):
                raise ValueError(
                    "needs "
                    + ("[source, edited] and an instruction" if task == "edit" else "[image] and a prompt")
                )
            items.append(
                AuditItem(str(row["id"]), str(row["axis"]), int(row["human_score"]), str(text), imgs)
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"audit.bench={uri}: {path.name}:{n}: {exc}") from None
    if not items:
        raise InputError(f"audit.bench={uri}: no {task} items (the audit set must match the run's task)")
    return AuditSet(task, items, uri)


def _tensor(img: Any) -> torch.Tensor:
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def axis_score(b: RewardBreakdown, axis: str) -> float | None:
    """The critic's raw 1–5 score of `axis` in a reward, None when it has none (a parse failure)."""
    raw = b.raw_scores.get(axis)
    if isinstance(raw, int | float) and math.isfinite(raw):
        return float(raw)
    norm = getattr(b, axis, None)
    return 1.0 + 4.0 * float(norm) if norm is not None and math.isfinite(norm) else None


def axis_confidence(b: RewardBreakdown, axis: str) -> float | None:
    c = b.confidence
    if c is None:
        return None
    if c.axes and axis in c.axes:
        return float(c.axes[axis])
    return float(c.p)


@dataclass
class AuditRow:
    item: AuditItem
    score: float | None
    confidence: float | None
    reward: RewardBreakdown
    thumbs: list[bytes] = field(default_factory=list)

    @property
    def error(self) -> float | None:
        return None if self.score is None else abs(self.score - self.item.human)


@dataclass
class AuditResult:
    step: int
    rows: list[AuditRow]
    seconds: float

    def metrics(self) -> dict[str, float]:
        errs = [r.error for r in self.rows if r.error is not None]
        confs = [r.confidence for r in self.rows if r.confidence is not None]
        n = len(self.rows)
        return {
            "audit/mae": sum(errs) / len(errs) if errs else math.nan,
            "audit/parse_failure_rate": (n - len(errs)) / max(n, 1),
            "audit/confidence_mean": sum(confs) / len(confs) if confs else math.nan,
            "audit/n": float(n),
            "time/audit": self.seconds,
        }


def _thumb(img: Any) -> bytes:
    img = img.convert("RGB")
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def run_audit(reward: Any, audit: AuditSet, step: int, *, retries: int = 0, backoff_s: float = 0.0,
              thumbs: int = 0) -> AuditResult:  # fmt: skip
    """Score the audit set through `reward` (a `firm.rl.rewards.RewardFunction`); the first `thumbs` rows keep
    thumbnails for the gallery."""
    from firm.images import load_image
    from firm.rl.rewards import RewardItem, with_retries

    t0 = time.perf_counter()
    groups = list(audit.inputs().items())
    rows: list[AuditRow] = []
    for i in range(0, len(groups), AUDIT_BATCH):
        chunk = groups[i : i + AUDIT_BATCH]
        calls, pics = [], []
        for key, items in chunk:
            imgs = [load_image(ref, name=f"audit item {items[0].id}: {ref}") for ref in key[:-1]]
            pics.append(imgs)
            tensors = [_tensor(im) for im in imgs]
            if audit.task == "edit":
                calls.append(
                    RewardItem("edit", key[-1], tensors[1], tensors[0], sample_id=f"audit-{items[0].id}")
                )
            else:
                calls.append(RewardItem("gen", key[-1], tensors[0], None, sample_id=f"audit-{items[0].id}"))
        results = with_retries(reward, calls, retries, backoff_s)
        for (_, items), b, imgs in zip(chunk, results, pics, strict=True):
            for it in items:
                keep = len(rows) < thumbs
                rows.append(AuditRow(it, axis_score(b, it.axis), axis_confidence(b, it.axis), b,
                                     [_thumb(im) for im in imgs] if keep else []))  # fmt: skip
    return AuditResult(step, rows, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------- gallery
@dataclass
class FlaggedSample:
    """A rollout sample an alarm pointed at (rank 0's samples of the step the alarm fired)."""

    alarm: str
    step: int
    prompt: str
    reward: RewardBreakdown
    image: bytes  # PNG thumbnail
    source: bytes | None = None
    note: str = ""


def thumb_tensor(img: torch.Tensor) -> bytes:
    from firm.rl.rewards import to_pil

    return _thumb(to_pil(img))


def _rationale(b: RewardBreakdown) -> str:
    if not b.reasoning:
        return "<i>no rationale</i>"
    return "".join(f"<p><b>{html.escape(k)}</b>: {html.escape(v)}</p>" for k, v in b.reasoning.items())


def _fmt(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def gallery_html(
    title: str,
    step: int,
    audit: AuditResult | None,
    metrics: dict[str, Any],
    alarms: Sequence[Any] = (),
    flagged: Sequence[FlaggedSample] = (),
) -> str:
    """One self-contained page (images inline): the audit's numbers, the fired alarms with their evidence, each
    shown audit item and each flagged sample with the critic's scores and rationale."""
    from firm.reports import page, png_tag, table

    sections: list[tuple[str, str]] = []
    nums = [["metric", "value"]] + [
        [k, _fmt(float(v))] for k, v in sorted(metrics.items()) if k.startswith("audit/")
    ]
    sections.append(
        (f"Audit after step {step}", table(nums) if len(nums) > 1 else "<p>no audit set (audit.bench)</p>")
    )
    if alarms:
        body = "".join(
            f"<div class='alarm'><p><b>{html.escape(a.name)}</b> at step {a.step}: {html.escape(a.message)}</p>"
            f"<pre>{html.escape(json.dumps(a.evidence, default=str, indent=1))}</pre></div>"
            for a in alarms
        )
        sections.append(("Alarms", body))
    if flagged:
        cards = []
        for f in flagged:
            pics = (png_tag(f.source, "source") if f.source else "") + png_tag(f.image, "sample")
            scores = ", ".join(
                f"{k} {_fmt(getattr(f.reward, k))}"
                for k in ("execution", "consistency", "instruction", "quality")
                if getattr(f.reward, k) is not None
            )
            cards.append(
                f"<div class='card'>{pics}<p><b>{html.escape(f.alarm)}</b>, step {f.step}: "
                f"{html.escape(f.prompt)}</p><p>reward {_fmt(f.reward.reward)} ({html.escape(f.reward.status)}"
                f"{'; ' + html.escape(scores) if scores else ''}){' — ' + html.escape(f.note) if f.note else ''}"
                f"</p>{_rationale(f.reward)}</div>"
            )
        sections.append(("Samples the alarms flagged", "".join(cards)))
    if audit is not None:
        cards = []
        for r in [r for r in audit.rows if r.thumbs]:
            pics = "".join(png_tag(t, "image") for t in r.thumbs)
            cards.append(
                f"<div class='card'>{pics}<p><b>{html.escape(r.item.id)}</b> ({html.escape(r.item.axis)}): "
                f"{html.escape(r.item.text)}</p><p>critic {_fmt(r.score)} · human {r.item.human} · error "
                f"{_fmt(r.error)} · confidence {_fmt(r.confidence)} · status {html.escape(r.reward.status)}</p>"
                f"{_rationale(r.reward)}</div>"
            )
        sections.append(("Audit items", "".join(cards) or "<p>none shown (audit.gallery_items=0)</p>"))
    return page(title, sections)
