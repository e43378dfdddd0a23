"""The quickstart's report: `DIR/report/index.html` and `DIR/report/summary.json`, read back from the pipeline run.

Everything comes from what the `firm` pipeline's steps left behind (the KFP local runner's `executor_output.json`
per step, the published bench report, the RL run's metrics): per stage what ran, its status and duration; the
critic's MAE per axis on held-out items against two baselines that see no image — the *mean predictor* (always the
training labels' mean for that axis) and the *random* critic (a uniform 1..5 guess; its expected MAE is computed
exactly) —; the selective MAE at 80 % coverage (the MAE of the items the critic was most confident about, from
the bench's calibration); parse failures; RL reward curves (execution and consistency apart for editing); the
policy's reward on held-out prompts before and after RL with sample grids; the reward server's own inference
counts; and the commands that rerun each stage alone on this machine or the whole pipeline on a cluster.

`summary.json` holds the numbers and `checks` (each a boolean with the numbers it was decided on):
`stages_succeeded`, `critic_beats_mean_baseline` (≥ 30 % lower MAE on every axis), `critic_beats_random`,
`rewards_through_triton` (the server counted reward inferences), `rl_reward_improved` (held-out mean reward after >
before).
"""

from __future__ import annotations

import html
import json
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from firm.quickstart.models import PipelineRun, QuickstartSize

MARGIN = 0.30  # "beats the mean baseline": at least 30 % lower MAE on each axis
AXES = {"edit": ("execution", "consistency"), "gen": ("instruction",)}


def _executor_output(run_dir: Path, task_name: str) -> dict[str, Any]:
    path = run_dir / task_name / "executor_output.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _artifact_meta(out: dict[str, Any], name: str) -> dict[str, Any]:
    arts = out.get("artifacts", {}).get(name, {}).get("artifacts", [])
    return dict(arts[0].get("metadata", {})) if arts else {}


def _output(out: dict[str, Any]) -> Any:
    return out.get("parameterValues", {}).get("Output")


def _baselines(human: list[int], train_mean: float) -> dict[str, float]:
    """MAE of the mean predictor (constant `train_mean`) and the expected MAE of a uniform random 1..5 guess."""
    n = max(1, len(human))
    mean_mae = sum(abs(train_mean - h) for h in human) / n
    random_mae = sum(sum(abs(k - h) for k in range(1, 6)) / 5 for h in human) / n
    return {"mean_predictor": mean_mae, "random": random_mae}


def _train_means(dataset_stats: dict[str, Any], task: str) -> dict[str, float]:
    """Mean training label per axis from the curated dataset's `by_task_axis_score` (`task/axis/score` → rows)."""
    sums: dict[str, list[float]] = {}
    for key, rows in dataset_stats.get("by_task_axis_score", {}).items():
        t, axis, score = key.split("/")
        if t == task:
            acc = sums.setdefault(axis, [0.0, 0.0])
            acc[0] += int(score) * rows
            acc[1] += rows
    return {axis: s / n for axis, (s, n) in sums.items() if n}


def critic_numbers(run_dir: Path, task: str, copy_to: Path) -> dict[str, Any]:
    """Per-axis MAE of the trained critic on the held-out bench vs the baselines (and the bench's pictures)."""
    from firm.storage import resolve_local

    curate = _executor_output(run_dir, "curate-dataset")
    local = run_dir / "curate-dataset" / "dataset"  # the step's Dataset artifact: {"uri", **stats}
    stats: dict[str, Any] = json.loads(local.read_text()) if local.is_file() else {}
    bench = _executor_output(run_dir, "bench-critic")
    report_uri = _output(bench)
    if not report_uri:
        return {}
    rep_dir = resolve_local(report_uri)
    report = json.loads((rep_dir / "report.json").read_text())
    human: dict[str, list[int]] = {}
    for line in (rep_dir / "human.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            human.setdefault(rec["axis"], []).append(int(rec["human_score"]))
    means = _train_means(stats, task)
    calibration = report.get("calibration") or {}
    axes: dict[str, Any] = {}
    for axis in AXES[task]:
        group = axis if task == "edit" else "overall"
        m = report.get(task, {}).get(group) or {}
        h = human.get(axis, [])
        base = _baselines(h, means.get(axis, 3.0))
        mae = m.get("mae")
        sel = (calibration.get(f"{task}.{axis}") or {}).get("selective_mae") or {}
        axes[axis] = {
            "mae": mae,
            # the MAE of the critic's most confident 80 % (None: no confidence)
            "selective_mae_80": sel.get("80"),
            "n": m.get("n"),
            "parse_failures": m.get("parse_failures"),
            "train_label_mean": means.get(axis),
            "mean_predictor_mae": base["mean_predictor"],
            "random_mae": base["random"],
            "vs_mean_predictor": None
            if mae is None or not base["mean_predictor"]
            else 1 - mae / base["mean_predictor"],
        }
    copy_to.mkdir(parents=True, exist_ok=True)
    pictures = []
    for name in ("confusion.png", "histograms.png"):
        if (rep_dir / name).is_file():
            shutil.copyfile(rep_dir / name, copy_to / name)
            pictures.append(name)
    overall = report.get(task, {}).get("overall") or {}
    return {
        "axes": axes,
        "parse_failure_rate": (overall.get("parse_failures") or 0) / max(1, overall.get("n") or 1),
        "bench_report": report_uri,
        "dataset": _output(curate),
        "dataset_splits": stats.get("splits"),
        "teacher_calls": (stats.get("curation") or {}).get("teacher_calls"),
        "pictures": pictures,
        "train_metrics": _artifact_meta(_executor_output(run_dir, "train-critic"), "metrics"),
        "critic": _output(_executor_output(run_dir, "train-critic")),
    }


def rl_numbers(run_dir: Path, task: str, copy_to: Path) -> dict[str, Any]:
    """RL curves and the before/after evaluation on held-out prompts."""
    from firm.reports import line_plot_png
    from firm.rl.report import read_run_metrics

    train = _executor_output(run_dir, "rl-train")
    if not train:
        return {}
    output_uri = _artifact_meta(train, "lora").get("output_uri", "")
    rows = read_run_metrics(output_uri) if output_uri else []
    subs = [k for k in ("reward/execution", "reward/consistency", "reward/instruction", "reward/quality")
            if any(k in r for r in rows)]  # fmt: skip
    curves: dict[str, list[float]] = {k: [float(r[k]) for r in rows if isinstance(r.get(k), int | float)]
                                      for k in ["reward/mean", *subs, "reward/parse_failure_rate"]}  # fmt: skip
    copy_to.mkdir(parents=True, exist_ok=True)
    if rows:
        series = {k: ([float(r["step"]) for r in rows if isinstance(r.get(k), int | float)], v)
                  for k, v in curves.items() if v}  # fmt: skip
        (copy_to / "reward-curves.png").write_bytes(
            line_plot_png(series, xlabel="step", ylabel="reward / score")
        )
    ev = _executor_output(run_dir, "eval-policy")
    numbers = json.loads(_output(ev)) if _output(ev) else {}
    served = {k.split("/", 1)[1]: int(v) for k, v in numbers.items() if k.startswith("served/")}
    return {
        "lora": _output(train),
        "output_uri": output_uri,
        "steps": len(rows),
        "curves": curves,
        "before": {k.split("/", 2)[2]: v for k, v in numbers.items() if k.startswith("eval/before/")},
        "after": {k.split("/", 2)[2]: v for k, v in numbers.items() if k.startswith("eval/after/")},
        "served_inferences": served,
        "pictures": ["reward-curves.png"] if rows else [],
        # the newest critic audit during RL (firm.rl.audit): the served critic on a held-out bench slice
        "audit": next(
            (
                {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("audit/")}
                | {"step": r["step"], "alarms": sum(int(x.get("alarms/fired", 0)) for x in rows)}
                for r in reversed(rows)
                if "audit/n" in r
            ),
            None,
        ),
    }


def commands(run: PipelineRun) -> dict[str, str]:
    """How to rerun each stage alone on this machine, and the whole pipeline on a cluster."""
    p = run.parameters
    task = run.task
    # the quickstart's teacher lives only while the quickstart runs: a rerun names a real endpoint
    shown = {**p, "curation_teacher": "<teacher endpoint URL>"} if "curation_teacher" in p else p
    params = " ".join(
        f"-p '{k}={json.dumps(v) if isinstance(v, list | dict) else v}'"
        for k, v in shown.items()
        if k != "backend"
    )
    curate = f"firmctl data curate-{task} --input {p.get('curation_input')} --teacher <teacher URL> --out <dataset URI>"
    return {
        "pipeline (this machine)": f"firmctl pipeline run firm --local {params}",
        "pipeline (cluster)": "firmctl pipeline submit firm --host <KFP host> -p dataset_source=... (the same "
        "parameters; base_model / recipes / pools for the cluster's GPU pools)",
        "curate": curate,
        "train critic": f"firmctl critic train --config {p.get('critic_recipe')} --nproc 2 model.path={p.get('base_model')} "
        "data.dataset=<dataset URI>",
        "bench": f"firmctl bench run --critic <critic URI> --bench {p.get('bench')} --out bench-results",
        "export": f"firmctl serve export --critic <critic URI> --task {task} --device cpu --out triton-repo",
        "deploy": "firmctl serve start --repository triton-repo",
        "RL": f"firmctl rl train --config {p.get('rl_recipe')} reward.kind=triton reward.url=127.0.0.1:8001 "
        + " ".join(str(x) for x in (p.get("rl_overrides") or [])),
        "evaluate": "(the pipeline's eval-policy step: firm.rl.evaluate.evaluate_policy with the same recipe and "
        "overrides, lora_uri = the RL run's final/lora)",
    }  # fmt: skip


def task_summary(run: PipelineRun, report_dir: Path) -> dict[str, Any]:
    assets = report_dir / run.task
    critic = critic_numbers(run.run_dir, run.task, assets)
    rl = rl_numbers(run.run_dir, run.task, assets)
    stages = [s.model_dump() for s in run.stages]
    ok = all(s["status"] == "success" for s in stages)
    axes = critic.get("axes", {})
    beats_mean = {
        a: v["mae"] is not None and v["mae"] <= (1 - MARGIN) * v["mean_predictor_mae"]
        for a, v in axes.items()
    }
    beats_random = {a: v["mae"] is not None and v["mae"] < v["random_mae"] for a, v in axes.items()}
    reward_model = "firm_edit_reward" if run.task == "edit" else "firm_gen_reward"
    served = rl.get("served_inferences", {})
    before, after = rl.get("before", {}).get("reward_mean"), rl.get("after", {}).get("reward_mean")
    checks = {
        "stages_succeeded": ok,
        "critic_beats_mean_baseline": bool(axes) and all(beats_mean.values()),
        "critic_beats_mean_baseline_per_axis": beats_mean,
        "critic_beats_random": bool(axes) and all(beats_random.values()),
        "rewards_through_triton": served.get(reward_model, 0) > 0,
        "rl_reward_improved": before is not None and after is not None and after > before,
    }
    return {
        "task": run.task,
        "run_dir": str(run.run_dir),
        "seconds": run.seconds,
        "stages": stages,
        "critic": critic,
        "rl": {**rl, "base_policy": run.base_policy},
        "checks": checks,
        "commands": commands(run),
        "kfp_pages": artifact_pages(run, report_dir),
        "grids": sample_grids(Path(run.run_dir, "eval-policy", "samples"), assets),
    }


KFP_PAGES = (  # (link text, step, artifact, type): the steps' pages, copied with the extension of their type
    ("bench report", "bench-critic", "report", "html"),
    ("RL curves", "rl-train", "curves", "html"),
    ("policy before/after", "eval-policy", "samples", "html"),
    ("dataset summary", "curate-dataset", "summary", "md"),
)


def artifact_pages(run: PipelineRun, report_dir: Path) -> dict[str, str]:
    """The KFP artifact pages of a run, copied next to the report as `<task>/<step>-<artifact>.<type>` (the
    artifacts themselves have no extension: a browser would show their source); link text → path under the report."""
    out: dict[str, str] = {}
    for name, step, art, kind in KFP_PAGES:
        src = Path(run.run_dir, step, art)
        if not src.is_file():
            continue
        if kind == "md":  # markdown: shown as text
            kind = "txt"
        rel = f"{run.task}/{step}-{art}.{kind}"
        (report_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, report_dir / rel)
        out[name] = rel
    return out


_GRID = re.compile(r'<img alt="(before|after)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def sample_grids(samples_html: Path, copy_to: Path) -> list[str]:
    """The before/after sample grids of the eval step's page, written as PNGs beside the report (shown on it)."""
    import base64

    if not samples_html.is_file():
        return []
    names = []
    for side, data in _GRID.findall(samples_html.read_text(errors="replace")):
        copy_to.mkdir(parents=True, exist_ok=True)
        (copy_to / f"samples-{side}.png").write_bytes(base64.b64decode(data))
        names.append(f"samples-{side}.png")
    return names


def _text(x: Any) -> str:
    """A value as plain text (not escaped: `table` escapes its cells): dicts as `key: value` pairs, booleans as
    yes/no, floats to 3 significant digits."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.3g}"
    if isinstance(x, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in x.items()) or "n/a"
    if isinstance(x, list | tuple):
        return ", ".join(_text(v) for v in x) or "n/a"
    return str(x)


def _fmt(x: Any) -> str:
    """A value as HTML text (escaped once), for fragments outside `table`."""
    return html.escape(_text(x))


def _base_policy_line(base: dict[str, Any] | None) -> str:
    if not base:
        return "base policy n/a"
    w = base.get("warmup")
    if not w:
        return f"base policy {_fmt(base['path'])} (random-init)"
    return (f"base policy {_fmt(base['path'])}: warmed up {w['steps']} flow-matching steps on {w['items']} synthetic "
            f"items at {w['resolution']} px, loss {_fmt(w['first_loss'])} → {_fmt(w['last_loss'])}, "
            f"{_fmt(w['seconds'])} s")  # fmt: skip


def _task_html(t: dict[str, Any]) -> list[tuple[str, str]]:
    from firm.reports import table

    name = t["task"]
    stages = table([["stage", "KFP task", "status", "seconds", "headline", "log"],
                    *[[s["name"], s["task"], s["status"], _text(s["seconds"]), s.get("headline") or "",
                       str(s.get("log") or "")] for s in t["stages"]]])  # fmt: skip
    c = t["critic"]
    axes = c.get("axes", {})
    crit = table([["axis", "critic MAE", "selective MAE at 80 %", "mean predictor MAE", "random MAE",
                   "vs mean predictor", "parse failures"],
                  *[[a, _text(v["mae"]), _text(v.get("selective_mae_80")), _text(v["mean_predictor_mae"]),
                     _text(v["random_mae"]),
                     "n/a" if v["vs_mean_predictor"] is None else f"{100 * v['vs_mean_predictor']:.0f} % lower",
                     _text(v["parse_failures"])] for a, v in axes.items()]])  # fmt: skip
    pics = "".join(f'<figure><img src="{name}/{p}" alt="{p}"><figcaption>{p}</figcaption></figure>'
                   for p in c.get("pictures", []))  # fmt: skip
    rl = t["rl"]
    keys = sorted(set(rl.get("before", {})) | set(rl.get("after", {})))
    rl_table = table([["held-out prompts", "before RL", "after RL"],
                      *[[k, _text(rl["before"].get(k)), _text(rl["after"].get(k))] for k in keys]])  # fmt: skip
    served = table([["model", "successful inferences (server count)"],
                    *[[m, n] for m, n in sorted(rl.get("served_inferences", {}).items())]])  # fmt: skip
    rl_pics = "".join(f'<figure><img src="{name}/{p}" alt="{p}"><figcaption>{p}</figcaption></figure>'
                      for p in rl.get("pictures", []))  # fmt: skip
    links = "<ul>" + "".join(f'<li><a href="{html.escape(v)}">{html.escape(k)}</a> (the KFP step\'s page, '
                             f'{"HTML" if v.endswith(".html") else "text"})</li>'
                             for k, v in t["kfp_pages"].items()) + "</ul>"  # fmt: skip
    grids = "".join(f'<figure><img src="{name}/{g}" alt="{g}"><figcaption>policy samples, '
                    f'{"before" if "before" in g else "after"} RL (held-out prompts)</figcaption></figure>'
                    for g in t.get("grids", []))  # fmt: skip
    checks = table([["check", "result"], *[[k.replace("_", " "), _text(v)] for k, v in t["checks"].items()]])
    cmds = "".join(
        f"<h4>{html.escape(k)}</h4><pre class='cmd'>{html.escape(v)}</pre>" for k, v in t["commands"].items()
    )
    return [
        (f"{name}: stages ({t['seconds']:.0f} s)", stages),
        (f"{name}: checks", checks),
        (f"{name}: critic on held-out items", crit + pics
         + f"<p>dataset {_fmt(c.get('dataset'))}, splits {_fmt(c.get('dataset_splits'))}, teacher calls "
           f"{_fmt(c.get('teacher_calls'))}; trained critic {_fmt(c.get('critic'))}</p>"),
        (f"{name}: RL (DiffusionNFT, rewards over gRPC)", rl_pics + grids + rl_table + served
         + f"<p>{_base_policy_line(rl.get('base_policy'))}; LoRA {_fmt(rl.get('lora'))}</p>"),
        (f"{name}: the pipeline's own pages", links),
        (f"{name}: rerun a stage", cmds),
    ]  # fmt: skip


def _console_summary(t: dict) -> str:
    """Three lines per task: the critic's MAE against its baselines, the MAE of its most confident 80 % (selective
    MAE: a confidence that means something keeps it below the MAE), and the held-out reward with the checks."""
    axes = " · ".join(
        f"{a} {_fmt(v['mae'])} (mean predictor {_fmt(v['mean_predictor_mae'])}, random {_fmt(v['random_mae'])})"
        for a, v in t["critic"].get("axes", {}).items()
    )
    selective = " · ".join(
        f"{a} {_fmt(v.get('selective_mae_80'))}" for a, v in t["critic"].get("axes", {}).items()
    )
    rl = t["rl"]
    checks = {k: v for k, v in t["checks"].items() if not k.endswith("per_axis")}
    failed = [k for k, v in checks.items() if not v]
    verdict = f"{len(checks) - len(failed)}/{len(checks)} checks passed" + (
        f" (failed: {', '.join(failed)})" if failed else ""
    )
    return (
        f"{t['task']}: critic MAE {axes or 'not measured'}\n"
        + (f"{t['task']}: selective MAE at 80% (most confident) {selective}\n" if selective else "")
        + (
            f"{t['task']}: critic audit during RL (after step {au['step']}): MAE {_fmt(au.get('mae'))}, parse "
            f"failures {_fmt(au.get('parse_failure_rate'))}, confidence {_fmt(au.get('confidence_mean'))}, "
            f"{au['alarms']} alarm(s)\n"
            if (au := rl.get("audit"))
            else ""
        )
        + f"{t['task']}: held-out reward {_fmt(rl.get('before', {}).get('reward_mean'))} → "
        f"{_fmt(rl.get('after', {}).get('reward_mean'))} after RL; {verdict}"
    )


def write_report(
    work: Path, runs: list[PipelineRun], *, size: QuickstartSize, started: datetime, seconds: float,
    error: str | None, console: Console,
) -> Path:  # fmt: skip
    """Write `work/report/{index.html,summary.json}` (atomically: summary last) and print the key numbers."""
    from firm.reports import page
    from firm.storage.base import atomic_path

    out = work / "report"
    out.mkdir(parents=True, exist_ok=True)
    tasks = [task_summary(r, out) for r in runs]
    summary = {
        "workdir": str(work),
        "size": size.model_dump(),
        "started": started.isoformat(),
        "seconds": seconds,
        "error": error,
        "tasks": {t["task"]: t for t in tasks},
        "ok": error is None
        and all(all(v for k, v in t["checks"].items() if not k.endswith("per_axis")) for t in tasks),
    }
    sections = [("Summary", f"<p>size {size.name}, {seconds:.0f} s, started {started:%Y-%m-%d %H:%M} UTC"
                 + (f"; <b>failed</b>: {html.escape(error)}" if error else "") + "</p>")]  # fmt: skip
    for t in tasks:
        sections += _task_html(t)
    with atomic_path(out / "index.html") as tmp:
        Path(tmp).write_text(page("FIRM quickstart", sections))
    with atomic_path(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=str))
    for t in tasks:
        console.print(_console_summary(t), highlight=False, soft_wrap=True)
    return out
