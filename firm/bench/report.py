"""FIRM-Bench reports: `report.json`, `report.md` (the paper's table format), PNG plots and a self-contained HTML page.

`report.md` puts the paper's published MAE rows (FIRM-Bench, Tables 1–2) above this run's row so a critic can be
compared at a glance, then the fuller table (n, MAE with bootstrap 95% CI, exact/within-1 accuracy, Pearson,
Spearman, bias, parse failures). Plots (matplotlib's Agg canvas, no pyplot state): one confusion matrix per group
(`confusion.png`) and human-vs-critic score histograms (`histograms.png`), both drawn from the report's confusion
matrices (row sums = human histogram, column sums = critic histogram). `report.html` inlines the plots as base64 so
it can be shown as a single KFP HTML artifact.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from firm.bench.metrics import EDIT_GROUPS, GEN_GROUPS, BenchReport, GroupMetrics, report_json
from firm.storage.base import atomic_path

# Published MAE (lower is better) from the FIRM paper; None = not reported for that task.
PAPER_EDIT_ROWS: list[tuple[str, tuple[float, float, float]]] = [
    ("FIRM-Edit-8B (paper)", (0.53, 0.73, 0.62)),
    ("GPT-5 (paper)", (0.62, 0.73, 0.67)),
    ("Gemini-3-Pro (paper)", (0.54, 0.57, 0.55)),
    ("Qwen3-VL-8B zero-shot (paper)", (0.66, 1.12, 0.87)),
]
PAPER_GEN_ROWS: list[tuple[str, tuple[float, float, float]]] = [
    ("FIRM-Gen-8B (paper)", (0.45, 0.57, 0.51)),
    ("GPT-5 (paper)", (0.50, 0.53, 0.52)),
    ("Gemini-3-Pro (paper)", (0.38, 0.42, 0.40)),
    ("Qwen3-VL-8B zero-shot (paper)", (0.63, 0.63, 0.63)),
]
REPORT_FILES = ("report.json", "report.md", "report.html", "confusion.png", "histograms.png")


def _fmt(x: float | None, nd: int = 2) -> str:
    if x is None or x != x:  # None or NaN
        return "–"
    return f"{x:.{nd}f}"


def _mae(g: GroupMetrics | None) -> str:
    return "–" if g is None else _fmt(g.mae)


def paper_tables(report: BenchReport, critic: str) -> dict[str, list[list[str]]]:
    """The two paper-format tables (header row first) with the reference rows above this run's row."""
    edit = [["Critic", "Execution", "Consistency", "Overall"]]
    edit += [[name, *(_fmt(v) for v in vals)] for name, vals in PAPER_EDIT_ROWS]
    edit.append([f"**{critic}**", *(_mae(report.edit.get(g)) for g in EDIT_GROUPS)])
    gen = [["Critic", "Easy", "Hard", "Overall"]]
    gen += [[name, *(_fmt(v) for v in vals)] for name, vals in PAPER_GEN_ROWS]
    gen.append([f"**{critic}**", *(_mae(report.gen.get(g)) for g in GEN_GROUPS)])
    return {"FIRM-Bench-Edit (MAE ↓)": edit, "FIRM-Bench-Gen (MAE ↓)": gen}


def detail_table(report: BenchReport) -> list[list[str]]:
    rows = [["Group", "n", "MAE", "95% CI", "Acc", "Within-1", "Pearson", "Spearman", "Bias", "Parse fail."]]
    for task, groups in (("edit", EDIT_GROUPS), ("gen", GEN_GROUPS)):
        for name in groups:
            g = getattr(report, task).get(name)
            if g is None:
                rows.append([f"{task}.{name}", "0", *(["–"] * 8)])
                continue
            ci = "–" if g.ci95 is None else f"[{g.ci95[0]:.2f}, {g.ci95[1]:.2f}]"
            rows.append(
                [
                    f"{task}.{name}",
                    str(g.n),
                    _fmt(g.mae, 3),
                    ci,
                    _fmt(g.accuracy),
                    _fmt(g.within1),
                    _fmt(g.pearson),
                    _fmt(g.spearman),
                    f"{g.bias:+.2f}" if g.bias == g.bias else "–",
                    str(g.parse_failures),
                ]
            )
    return rows


def calibration_table(report: BenchReport) -> list[list[str]] | None:
    """Per axis: items, mean confidence, selective MAE of the most confident 50/80/100 %, AURC; None without
    confidence."""
    rows = [c for c in report.calibration.items() if c[1] is not None]
    if not rows:
        return None
    out = [["axis", "n", "mean conf.", "MAE@50%", "MAE@80%", "MAE@100%", "AURC"]]
    for key, c in rows:
        assert c is not None
        sm = c.selective_mae
        out.append(
            [
                key,
                str(c.n),
                _fmt(c.mean_confidence),
                _fmt(sm.get("50")),
                _fmt(sm.get("80")),
                _fmt(sm.get("100")),
                _fmt(c.aurc),
            ]
        )
    return out


CALIBRATION_NOTE = (
    "Confidence = the critic's probability of the score digit it wrote. MAE@k% = MAE of the k % most confident "
    "items (a confidence that means something: MAE@50% < MAE@100%); AURC = area under that risk–coverage curve."
)


def _calibration_png(report: BenchReport) -> bytes | None:
    """Per axis: reliability (MAE and exact-match rate by confidence decile) and the risk–coverage curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = [(k, c) for k, c in report.calibration.items() if c is not None]
    if not items:
        return None
    fig = Figure(figsize=(6.4, 2.8 * len(items)), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(items), 2, squeeze=False)
    fig.subplots_adjust(hspace=0.6, wspace=0.35, left=0.1, right=0.88)
    for (key, c), (rel, rc) in zip(items, axes, strict=True):
        conf = [b.confidence for b in c.deciles]
        rel.plot(conf, [b.mae for b in c.deciles], "o-", label="MAE")
        rel.set_xlabel("confidence (decile mean)")
        rel.set_ylabel("|critic − human|")
        acc = rel.twinx()
        acc.plot(conf, [b.accuracy for b in c.deciles], "s--", color="tab:orange", label="exact match")
        acc.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        acc.set_ylim(0, 1)
        acc.set_ylabel("exact-match rate")
        rel.set_title(f"{key}: reliability", fontsize=9)
        cov = [p[0] for p in c.curve]
        rc.plot(cov, [p[1] for p in c.curve], "-")
        rc.axhline(c.selective_mae.get("100", 0.0), color="grey", linestyle=":", linewidth=0.8)
        rc.set_xlabel("coverage (most confident first)")
        rc.set_ylabel("MAE")
        rc.set_title(f"{key}: risk–coverage (AURC {c.aurc:.2f})", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _md_table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def render_markdown(report: BenchReport, critic: str) -> str:
    parts = [f"# FIRM-Bench report: {critic}", ""]
    for title, rows in paper_tables(report, critic).items():
        parts += [f"## {title}", "", _md_table(rows), ""]
    policy = report.meta.get("parse_failure_policy", "worst")
    parts += [
        "## All metrics",
        "",
        _md_table(detail_table(report)),
        "",
        f"Overall MAE is pooled over all items of the task (sample-weighted). Parse failures are scored with policy "
        f"`{policy}`. Bias = mean(critic − human). CI: percentile bootstrap of the MAE "
        f"({report.meta.get('bootstrap', {})}). Pearson/Spearman are `–` when undefined (a constant side).",
        "",
    ]
    by_status = report.meta.get("parse_failures_by_status")
    if by_status:
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))  # type: ignore[union-attr]
        parts += [
            f"Parse failures by status: {shown} (`truncated`: the answer hit its token budget before a score).",
            "",
        ]
    if report.meta.get("rubrics"):
        parts += [f"Rubric pack: `{report.meta['rubrics']}`.", ""]
    cal = calibration_table(report)
    if cal is not None:
        parts += ["## Calibration", "", _md_table(cal), "", CALIBRATION_NOTE, ""]
    return "\n".join(parts)


def _groups(report: BenchReport) -> list[tuple[str, GroupMetrics]]:
    out = []
    for task, names in (("edit", EDIT_GROUPS), ("gen", GEN_GROUPS)):
        for name in names:
            g = getattr(report, task).get(name)
            if g is not None and g.n > 0:
                out.append((f"{task}.{name}", g))
    return out


def _figure_png(kind: str, report: BenchReport) -> bytes:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = _groups(report)
    n = max(1, len(groups))
    fig = Figure(figsize=(3.2 * n, 3.0), dpi=80)
    FigureCanvasAgg(fig)  # Agg rendering without pyplot's global state
    axes = fig.subplots(1, n, squeeze=False)
    fig.subplots_adjust(left=0.5 / n, right=1 - 0.1 / n, bottom=0.17, top=0.88, wspace=0.45)
    if not groups:
        axes[0][0].text(0.5, 0.5, "no scored items", ha="center", va="center")
        axes[0][0].set_axis_off()
    for ax, (name, g) in zip(axes[0], groups, strict=False):
        cm = np.array(g.confusion)
        if kind == "confusion":
            ax.imshow(cm, cmap="Blues", origin="lower", extent=(0.5, 5.5, 0.5, 5.5))
            for i in range(5):
                for j in range(5):
                    if cm[i, j]:
                        dark = cm[i, j] > cm.max() / 2
                        ax.text(
                            j + 1,
                            i + 1,
                            str(cm[i, j]),
                            ha="center",
                            va="center",
                            fontsize=8,
                            color="white" if dark else "black",
                        )
            ax.set_xlabel("critic score")
            ax.set_ylabel("human score")
            ax.set_xticks(range(1, 6))
            ax.set_yticks(range(1, 6))
        else:
            x = np.arange(1, 6)
            ax.bar(x - 0.2, cm.sum(axis=1), width=0.4, label="human")
            ax.bar(x + 0.2, cm.sum(axis=0), width=0.4, label="critic")
            ax.set_xticks(x)
            ax.set_xlabel("score")
            ax.set_ylabel("items")
            ax.legend(fontsize=7)
        ax.set_title(f"{name} (MAE {g.mae:.2f})", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _html_table(rows: list[list[str]]) -> str:
    head, *body = rows
    th = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.replace('**', ''))}</td>" for c in r) + "</tr>" for r in body
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def render_html(report: BenchReport, critic: str, pngs: dict[str, bytes]) -> str:
    body = [f"<h1>FIRM-Bench report: {html.escape(critic)}</h1>"]
    for title, rows in paper_tables(report, critic).items():
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(rows)]
    body += ["<h2>All metrics</h2>", _html_table(detail_table(report))]
    cal = calibration_table(report)
    if cal is not None:
        body += ["<h2>Calibration</h2>", _html_table(cal), f"<p>{html.escape(CALIBRATION_NOTE)}</p>"]
    for name, data in pngs.items():
        b64 = base64.b64encode(data).decode("ascii")
        body.append(
            f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}"/>'
        )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "tbody tr:last-child{font-weight:bold}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>FIRM-Bench: {html.escape(critic)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_report(report: BenchReport, out_dir: str | Path, *, critic: str = "critic") -> dict[str, Path]:
    """Write report.json, report.md, confusion.png, histograms.png and report.html into `out_dir` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = report_json(report)
    doc.setdefault("meta", {})["critic"] = critic
    pngs = {
        "confusion.png": _figure_png("confusion", report),
        "histograms.png": _figure_png("histograms", report),
    }
    paths = {name: out / name for name in REPORT_FILES}
    _write(paths["report.json"], (json.dumps(doc, indent=2) + "\n").encode())
    _write(paths["report.md"], render_markdown(report, critic).encode())
    for name, data in pngs.items():
        _write(paths[name], data)
    cal = _calibration_png(report)
    if cal is not None:  # only where the critic gave confidences
        pngs["calibration.png"] = cal
        paths["calibration.png"] = out / "calibration.png"
        _write(paths["calibration.png"], cal)
    _write(paths["report.html"], render_html(report, critic, pngs).encode())
    return paths
