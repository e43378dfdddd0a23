"""Pages for the KFP UI (and anyone else): RL reward curves, the critic-audit gallery, and before/after evaluation of
a policy."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firm.reports import line_plot_png, page, png_tag, table

if TYPE_CHECKING:  # the launcher step (pipelines/components/launch.py) renders curves without loading torch
    from firm.rl.evaluate import PolicyEval


def read_run_metrics(output_uri: str) -> list[dict[str, Any]]:
    """The per-step metrics of an RL run, from its newest published checkpoint (`metrics.jsonl`); [] if none."""
    from firm.rl.checkpoint import checkpoints_prefix
    from firm.storage import latest, read_bytes

    ckpt = latest(checkpoints_prefix(output_uri))
    if ckpt is None:
        return []
    try:
        text = read_bytes(f"{ckpt}/metrics.jsonl").decode()
    except Exception:
        return []
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def curves_html(rows: list[dict[str, Any]], *, title: str) -> str:
    """Reward curves: the reward, and each sub-score on its own line (execution and consistency apart for editing;
    instruction and quality for generation), plus the parse-failure rate."""
    if not rows:
        return page(title, [("No metrics", "<p>the run published no metrics (no checkpoint yet)</p>")])

    def series(keys: list[str]) -> dict[str, tuple[list[float], list[float]]]:
        out = {}
        for k in keys:
            pts = [(float(r["step"]), float(r[k])) for r in rows if isinstance(r.get(k), int | float)]
            if pts:
                out[k] = ([p[0] for p in pts], [p[1] for p in pts])
        return out

    subs = [
        k
        for k in ("reward/execution", "reward/consistency", "reward/instruction", "reward/quality")
        if any(k in r for r in rows)
    ]
    sections = [
        ("Reward", png_tag(line_plot_png(series(["reward/mean"]), xlabel="step", ylabel="reward"), "reward")),
        ("Sub-scores", png_tag(line_plot_png(series(subs), xlabel="step", ylabel="normalised score"), "sub-scores")),
        ("Parse failures", png_tag(line_plot_png(series(["reward/parse_failure_rate"]), xlabel="step", ylabel="rate"), "parse failures")),
        ("Last step", table([["metric", "value"], *[[k, f"{v:.4g}"] for k, v in rows[-1].items() if isinstance(v, int | float)]])),
    ]  # fmt: skip
    return page(title, sections)


def eval_html(result: PolicyEval, *, title: str) -> str:
    """Before/after numbers and sample grids of `firm.rl.evaluate.evaluate_policy`."""
    numbers = result.metrics()
    keys = sorted({k.split("/", 2)[2] for k in numbers})
    rows = [["metric", "before", "after"]] + [
        [k, f"{numbers.get(f'eval/before/{k}', float('nan')):.4g}", f"{numbers.get(f'eval/after/{k}', float('nan')):.4g}"]
        for k in keys
    ]  # fmt: skip
    grids = "".join(
        f"<figure>{png_tag(Path(side.grid).read_bytes(), name)}<figcaption>{name}</figcaption></figure>"
        for name, side in (("before", result.before), ("after", result.after))
        if side is not None
    )
    prompts = "<ol>" + "".join(f"<li>{html.escape(p)}</li>" for p in result.prompts) + "</ol>"
    return page(title, [("Rewards", table(rows)), ("Samples", grids), ("Prompts", prompts)])


GALLERY = "audit/gallery.html"  # under an RL run's output_uri (`firm.rl.trainer.Trainer._gallery`)
ALARM = "alarm.json"  # under output_uri when an alarm stopped the run


def read_run_json(output_uri: str, name: str) -> Any:
    """A JSON file an RL run wrote under its output_uri (e.g. `alarm.json`), None when it has none."""
    from firm.storage import read_bytes

    try:
        return json.loads(read_bytes(f"{output_uri.rstrip('/')}/{name}").decode())
    except Exception:
        return None


def gallery_page(output_uri: str, *, title: str) -> str:
    """The run's rationale gallery (newest audit, alarms and the samples they flagged), or a page saying why there
    is none."""
    from firm.storage import read_bytes

    try:
        return read_bytes(f"{output_uri.rstrip('/')}/{GALLERY}").decode()
    except Exception:
        return page(
            title, [("No audit", "<p>the run wrote no audit gallery (no audit.bench and no alarm)</p>")]
        )
