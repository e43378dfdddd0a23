"""`firmctl bench run`: judge every bench item with a critic backend, then score and report.

Output directory::

    out/
      predictions.jsonl   one `Prediction` per judged item (score, status, raw text, reasoning), appended line by line
      human.jsonl         the human scores of the evaluated items
      report.json, report.md, report.html, confusion.png, histograms.png

Resumable: ids already in `predictions.jsonl` are skipped on rerun (a file written by another critic is refused,
so one report never mixes two critics). Each line is appended with one `write` on an
`O_APPEND` descriptor and the file is fsync'ed after every batch, so a crash leaves at most one incomplete last
line; that line (no trailing newline and not valid JSON) is dropped on the next run and its item judged again. A
malformed line anywhere else is an error naming file:line (nothing is silently rewritten).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from firm.bench.backends import CriticBackend
from firm.bench.loaders import Bench, validation_message, write_records
from firm.bench.metrics import DEFAULT_BOOTSTRAP, BenchReport, ParseFailurePolicy, compute_report
from firm.bench.records import BenchItem, Prediction
from firm.bench.report import write_report
from firm.errors import InputError
from firm.schemas import Judgement

PREDICTIONS_FILE = "predictions.jsonl"
HUMAN_FILE = "human.jsonl"


@dataclass
class RunResult:
    out_dir: Path
    judged: int
    skipped: int
    report: BenchReport
    files: dict[str, Path] = field(default_factory=dict)


def _repair_tail(path: Path) -> None:
    """Drop an incomplete last line left by a crash (no newline and not parseable JSON)."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        json.loads(tail)
    except ValueError:
        with path.open("r+b") as fh:
            fh.truncate(cut)
        return
    with path.open("ab") as fh:  # a complete record that only lacks its newline
        fh.write(b"\n")


def load_predictions(path: str | Path) -> dict[str, Prediction]:
    """Existing predictions by id (after repairing a torn last line); file:line errors otherwise."""
    p = Path(path)
    if not p.exists():
        return {}
    _repair_tail(p)
    out: dict[str, Prediction] = {}
    with p.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                pred = Prediction.model_validate_json(line)
            except ValidationError as exc:
                raise InputError(f"{p}:{lineno}: {validation_message(exc)}") from None
            if pred.id in out:
                raise InputError(f"{p}:{lineno}: duplicate id {pred.id!r}")
            out[pred.id] = pred
    return out


def to_prediction(j: Judgement, item: BenchItem, critic: str) -> Prediction:
    score = j.score if j.ok and isinstance(j.score, int) else None
    status = j.status if score is not None or j.status != "ok" else "unparseable"
    return Prediction(
        id=item.id,
        score=score,
        status=status,
        expected_score=j.expected_score,
        confidence=j.confidence.p if score is not None and j.confidence is not None else None,
        raw_text=j.raw_text,
        reasoning=j.reasoning or None,
        task=item.task,
        axis=item.axis,
        critic=critic,
    )


def _append(fd: int, preds: Sequence[Prediction]) -> None:
    for p in preds:
        os.write(fd, (p.model_dump_json(exclude_none=True) + "\n").encode("utf-8"))
    os.fsync(fd)


def run_bench(
    backend: CriticBackend,
    bench: Bench,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    policy: ParseFailurePolicy = "worst",
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    progress: bool = True,
) -> RunResult:
    """Judge the (first `limit`) bench items not yet in `out_dir/predictions.jsonl`, then write the reports."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    from firm.storage.base import ensure_dir, remove_if_empty

    out = Path(out_dir)
    created = ensure_dir(out, "--out")
    pred_path = out / PREDICTIONS_FILE
    selected = bench.items[:limit] if limit else list(bench.items)
    try:
        return _run(backend, bench, out, pred_path, selected, batch_size, policy, n_boot, seed, progress)
    except BaseException:
        # a failed start (unreachable critic, bad bench) leaves nothing behind: no empty predictions file, no
        # empty run directory; predictions judged before the failure stay (the run resumes from them)
        with contextlib.suppress(OSError):
            if pred_path.stat().st_size == 0:
                pred_path.unlink()
        remove_if_empty(created)
        raise


def _run(
    backend: CriticBackend,
    bench: Bench,
    out: Path,
    pred_path: Path,
    selected: list[BenchItem],
    batch_size: int,
    policy: ParseFailurePolicy,
    n_boot: int,
    seed: int,
    progress: bool,
) -> RunResult:
    done = load_predictions(pred_path)
    others = sorted({p.critic for p in done.values() if p.critic is not None and p.critic != backend.name})
    if others:
        raise InputError(
            f"{pred_path}: holds predictions by critic {', '.join(others)}, this run's critic is {backend.name}; "
            "resuming would mix two critics in one report (use another --out)"
        )
    todo = [it for it in selected if it.id not in done]
    skipped = len(selected) - len(todo)

    fd = os.open(pred_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        from firm.progress import Progress

        # on stderr (stdout is reserved for the JSON report): a bar on a terminal, periodic lines elsewhere
        with Progress(f"bench {backend.name}", total=len(todo), unit="items", enabled=progress) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                judgements = backend.judge(batch, bench)
                if len(judgements) != len(batch):
                    raise InputError(
                        f"critic {backend.name} returned {len(judgements)} judgements for {len(batch)} items"
                    )
                preds = [to_prediction(j, it, backend.name) for j, it in zip(judgements, batch, strict=True)]
                _append(fd, preds)
                for p in preds:
                    done[p.id] = p
                bar.advance(len(batch))
    finally:
        os.close(fd)

    humans = [it.human() for it in selected]
    write_records(out / HUMAN_FILE, humans)
    scores = {it.id: done[it.id].score for it in selected}
    confidences = {it.id: done[it.id].confidence for it in selected}
    report = compute_report(humans, scores, policy=policy, n_boot=n_boot, seed=seed, confidences=confidences)
    report.meta["judged_this_run"] = len(todo)
    report.meta["resumed"] = skipped
    # failures by status: `truncated` (answer cut at its token budget) is counted apart from `unparseable`
    statuses = Counter(done[it.id].status or "unparseable" for it in selected if done[it.id].score is None)
    report.meta["parse_failures_by_status"] = dict(sorted(statuses.items()))
    report.meta["rubrics"] = getattr(backend, "rubrics", "") or None
    files = write_report(report, out, critic=backend.name)
    files["predictions.jsonl"] = pred_path
    files["human.jsonl"] = out / HUMAN_FILE
    return RunResult(out_dir=out, judged=len(todo), skipped=skipped, report=report, files=files)
