"""Reading a curated dataset's `stats.json` back, a text table of it, and its score histogram (PNG)."""

from __future__ import annotations

import io
import json
from typing import Any

from firm.errors import InputError


def histogram_png(stats: dict[str, Any]) -> bytes:
    """Bars per axis: the scores kept (filled) over the scores the teacher gave before balancing (outline)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axes = list(stats.get("scores", {})) or ["(none)"]
    fig = Figure(figsize=(3.2 * len(axes), 2.8), dpi=80)
    FigureCanvasAgg(fig)
    plots = fig.subplots(1, len(axes), squeeze=False)[0]
    for ax, name in zip(plots, axes, strict=True):
        final = stats.get("scores", {}).get(name, {})
        before = stats.get("scores_before_balance", {}).get(name, {})
        xs = list(range(1, 6))
        ax.bar(xs, [before.get(str(k), 0) for k in xs], color="none", edgecolor="grey", label="scored")
        ax.bar(xs, [final.get(str(k), 0) for k in xs], color="tab:blue", alpha=0.8, label="kept")
        ax.set_xticks(xs)
        ax.set_xlabel("score")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def read_stats(uri_or_path: str) -> dict[str, Any]:
    """`stats.json` of a curated (or imported) dataset; a dataset without one gets its counts computed."""
    from firm.curation.dataset import read_sft_dataset
    from firm.storage import resolve_local

    root = resolve_local(uri_or_path)
    if not root.exists():
        raise InputError(f"{uri_or_path}: no such file or directory")
    path = root / "stats.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    ds = read_sft_dataset(uri_or_path, on_bad_row="skip", check_images=False)
    scores: dict[str, dict[str, int]] = {}
    written: dict[str, dict[str, int]] = {}
    for r in ds.rows:
        if isinstance(r.score, int):
            scores.setdefault(r.axis, {str(k): 0 for k in range(1, 6)})[str(r.score)] += 1
        w = written.setdefault(r.axis, {})
        w[r.split] = w.get(r.split, 0) + 1
    if not ds.rows and not ds.skipped:
        raise InputError(f"{uri_or_path}: the dataset has no rows")
    return {"kind": "dataset", "name": ds.info.name, "scores": scores, "samples": {"written": written}}


def stats_table(stats: dict[str, Any]) -> str:
    """A plain-text table: rows per axis and score, splits, the drop reasons and the teacher's confidence."""
    lines = [f"{stats.get('kind', '?')} dataset {stats.get('name', '')}".strip()]
    lines.append(f"{'axis':<12} {'1':>7} {'2':>7} {'3':>7} {'4':>7} {'5':>7} {'train':>8} {'val':>6}")
    written = stats.get("samples", {}).get("written", {})
    for axis, sc in stats.get("scores", {}).items():
        w = written.get(axis, {})
        cells = " ".join(f"{sc.get(str(k), 0):>7}" for k in range(1, 6))
        lines.append(f"{axis:<12} {cells} {w.get('train', 0):>8} {w.get('val', 0):>6}")
    drops = stats.get("items", {}).get("dropped", {})
    if drops:
        lines.append("items dropped: " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    for axis, d in stats.get("samples", {}).get("dropped", {}).items():
        if d:
            lines.append(f"{axis} samples dropped: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    tc = stats.get("teacher_confidence")
    if tc:
        lines.append(
            f"teacher confidence: {tc.get('with_confidence', 0)} labels with one (mean {tc.get('mean')}), "
            f"{tc.get('below', 0)} under {tc.get('min_confidence')}: {tc.get('flagged', 0)} flagged, "
            f"{tc.get('dropped', 0)} dropped"
        )
    t = stats.get("teacher")
    if t:
        lines.append(
            f"teacher: {t.get('calls', 0)} calls ({t.get('cache_hits', 0)} cached), {t.get('prompt_tokens', 0)} "
            f"prompt + {t.get('completion_tokens', 0)} completion tokens, {t.get('seconds', 0)} s"
        )
    return "\n".join(lines)
