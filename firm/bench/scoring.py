"""`firmctl bench score`: metrics from a predictions file and a human-scores file (no critic involved).

Predictions rows: `{"id": ..., "score": k | null}` (more fields, as written by `bench run`, are allowed).
Human rows: `{"id": ..., "task": "edit"|"gen", "axis": ..., "difficulty": ..., "human_score": k}`; a full
`bench.jsonl` works too (its extra input fields are ignored). Scores must be integers 1..5; errors name file:line.
A gen row without a difficulty counts in `gen.overall` only.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from firm.bench.loaders import iter_jsonl, read_records, validation_message
from firm.bench.metrics import DEFAULT_BOOTSTRAP, BenchReport, ParseFailurePolicy, check_ids, compute_report
from firm.bench.records import HumanScore, Prediction
from firm.errors import InputError


def read_humans(path: str | Path) -> list[HumanScore]:
    """Human rows (a `bench.jsonl` with inputs is accepted: only the HumanScore fields are read)."""
    keep = set(HumanScore.model_fields)
    rows: list[HumanScore] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        try:
            rec = HumanScore.model_validate({k: v for k, v in obj.items() if k in keep})
        except ValidationError as exc:
            raise InputError(f"{path}:{lineno}: {validation_message(exc)}") from None
        if rec.id in seen:
            raise InputError(f"{path}:{lineno}: duplicate id {rec.id!r} (first on line {seen[rec.id]})")
        seen[rec.id] = lineno
        rows.append(rec)
    if not rows:
        raise InputError(f"{path}: no human scores")
    return rows


def read_predictions(path: str | Path) -> dict[str, int | None]:
    """`{id: score | None}`; a row must state its score (`null` for a parse failure) — a row that omits `score`
    is an error, not a silent parse failure. Rows written by `bench run` omit a null score but carry a non-ok
    `status`, which says the same."""
    for lineno, obj in iter_jsonl(path):
        if "score" not in obj and obj.get("status") in (None, "ok"):
            raise InputError(f"{path}:{lineno}: no 'score' (write \"score\": null for a parse failure)")
    return {p.id: p.score for p in read_records(path, Prediction)}


def score_files(
    predictions: str | Path,
    human: str | Path,
    *,
    policy: ParseFailurePolicy = "worst",
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> BenchReport:
    humans = read_humans(human)
    preds = read_predictions(predictions)
    check_ids(humans, preds, what=f"{predictions} vs {human}")
    return compute_report(humans, preds, policy=policy, n_boot=n_boot, seed=seed)
