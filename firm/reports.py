"""Self-contained HTML pages (inline PNGs, no external assets): what pipeline steps hand to the KFP UI."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any


def png_tag(png: bytes, alt: str = "") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def table(rows: Sequence[Sequence[Any]]) -> str:
    head, *body = rows
    th = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    tr = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><tr>{th}</tr>{tr}</table>"


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A page with a heading per section; section bodies are HTML fragments (escape text before passing it)."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{b}" for h, b in sections)
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
             "pre{white-space:pre-wrap;overflow-wrap:anywhere}")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")  # fmt: skip


def line_plot_png(series: dict[str, tuple[list[float], list[float]]], *, xlabel: str, ylabel: str) -> bytes:
    """One PNG with a line per named (x, y) series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="." if len(x) < 50 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(loc="best", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
