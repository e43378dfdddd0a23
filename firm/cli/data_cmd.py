"""`firmctl data`: curate critic SFT data with teachers, import the released FIRM data, show a dataset's stats."""

from __future__ import annotations

import time

import typer

from firm.cli._common import cli_errors, echo_json, echo_out

app = typer.Typer(
    help="Critic SFT data: curation with teachers, the released FIRM data, stats.", no_args_is_help=True
)

TEACHER_HELP = (
    "an OpenAI-compatible endpoint (http(s)://host:port, openai://host:port) or a local model "
    "(HF id, path, file:// / s3:// URI)"
)


def _teacher(spec: str, model: str | None, concurrency: int, retries: int, timeout: float, rps: float | None):  # type: ignore[no-untyped-def]
    from firm.curation.teachers import make_teacher

    return make_teacher(spec, model=model, concurrency=concurrency, max_retries=retries, timeout_s=timeout,
                        rate_limit_rps=rps)  # fmt: skip


def _balance(values: list[str]) -> dict[str, str]:
    from firm.errors import InputError

    out: dict[str, str] = {}
    for v in values:
        axis, sep, target = v.partition("=")
        if not sep or not axis or not target:
            raise InputError(
                f"--balance {v!r}: expected AXIS=TARGET, e.g. execution=paper or consistency=uniform"
            )
        out[axis.strip()] = target.strip()
    return out


_COMMON = {
    "input": typer.Option(..., "--input", help="JSONL manifest (path or file:// / s3:// URI)"),
    "out": typer.Option(..., "--out", help="where to publish the dataset (a local dir or a URI)"),
    "low_confidence": typer.Option(
        "flag",
        "--low-confidence",
        help="labels the teacher was unsure of (its logprobs, where the endpoint returns them): flag | drop",
    ),
    "min_confidence": typer.Option(
        0.5, "--min-confidence", help="unsure: the teacher's probability of its score digit is below this"
    ),
}
OverwriteOpt = typer.Option(False, "--overwrite", help="replace an existing, non-empty dataset at --out")


def _check_out(out: str, overwrite: bool) -> None:
    """The shared refusal of an existing, non-empty --out, before any teacher or input is touched."""
    from firm.storage.targets import check_target

    check_target(out, "--out", overwrite=overwrite)


@app.command("curate-edit")
@cli_errors
def curate_edit_cmd(
    input: str = _COMMON["input"],
    out: str = _COMMON["out"],
    teacher: str = typer.Option(..., "--teacher", help=f"the report and scoring VLM: {TEACHER_HELP}"),
    model: str | None = typer.Option(
        None, "--model", help="model name at the endpoint (or FIRM_OPENAI_MODEL)"
    ),
    rewriter: str | None = typer.Option(
        None, "--rewriter", help="LLM that rewrites instructions (default: teacher)"
    ),
    rewrite_ratio: float = typer.Option(
        0.0, "--rewrite-ratio", help="share of instructions rewritten (0..1)"
    ),
    balance: list[str] = typer.Option([], "--balance", help="AXIS=TARGET (paper, uniform or 5:50,4:16,...)"),
    name: str = typer.Option("curated-edit", "--name"),
    rubrics: str | None = typer.Option(None, "--rubrics", help="rubric pack (teacher rubrics of stage 2)"),
    val_fraction: float = typer.Option(0.01, "--val-fraction"),
    leak_policy: str = typer.Option("clean", "--leak-policy", help="clean | drop | keep"),
    low_confidence: str = _COMMON["low_confidence"],
    min_confidence: float = _COMMON["min_confidence"],
    cache: str | None = typer.Option(None, "--cache", help="teacher-call cache URI ('off' disables)"),
    work_dir: str | None = typer.Option(None, "--work-dir", help="journal directory (resume state)"),
    concurrency: int = typer.Option(8, "--concurrency"),
    retries: int = typer.Option(4, "--retries"),
    timeout: float = typer.Option(120.0, "--timeout", help="seconds per teacher request"),
    rps: float | None = typer.Option(None, "--rate-limit", help="max teacher requests started per second"),
    limit: int | None = typer.Option(None, "--limit", help="only the first N manifest items"),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Difference-first editing curation (report → score per axis); prints the dataset URI and stats (JSON)."""
    from firm.curation.edit import EditCurationConfig, curate_edit

    _check_out(out, overwrite)
    cfg = EditCurationConfig(
        input=input, out=out, name=name, rubrics=rubrics, val_fraction=val_fraction, leak_policy=leak_policy,  # type: ignore[arg-type]
        balance=_balance(balance), cache=cache, work_dir=work_dir, limit=limit, rewrite_ratio=rewrite_ratio,  # type: ignore[arg-type]
        overwrite=overwrite, low_confidence=low_confidence, min_confidence=min_confidence,  # type: ignore[arg-type]
    )  # fmt: skip
    t = _teacher(teacher, model, concurrency, retries, timeout, rps)
    rw = _teacher(rewriter, model, concurrency, retries, timeout, rps) if rewriter else None
    t0 = time.perf_counter()
    res = curate_edit(cfg, t, rewriter=rw)
    _done("editing curation", t0, res.uri, res.stats)
    echo_json({"uri": res.uri, "stats": res.stats})


def _done(what: str, t0: float, uri: str, stats: dict) -> None:
    from firm.progress import print_done

    rows = stats.get("splits") or {}
    counts = ", ".join(f"{v} {k}" for k, v in rows.items() if isinstance(v, int))
    tc = stats.get("teacher_confidence") or {}
    unsure = (
        f"; teacher unsure (confidence < {tc['min_confidence']:g}) of {tc['below']} label(s): "
        f"{tc['flagged']} flagged, {tc['dropped']} dropped ({tc['without_confidence']} without a confidence)"
        if tc
        else ""
    )
    print_done(
        what, time.perf_counter() - t0, f"dataset {uri}" + (f" ({counts} rows)" if counts else "") + unsure
    )


@app.command("curate-gen")
@cli_errors
def curate_gen_cmd(
    input: str = _COMMON["input"],
    out: str = _COMMON["out"],
    planner: str = typer.Option(..., "--planner", help=f"the checklist LLM: {TEACHER_HELP}"),
    scorer: str = typer.Option(..., "--scorer", help=f"the scoring VLM: {TEACHER_HELP}"),
    planner_model: str | None = typer.Option(
        None, "--planner-model", help="model name at the planner endpoint"
    ),
    scorer_model: str | None = typer.Option(None, "--scorer-model", help="model name at the scorer endpoint"),
    balance: list[str] = typer.Option([], "--balance", help="instruction=TARGET"),
    name: str = typer.Option("curated-gen", "--name"),
    rubrics: str | None = typer.Option(None, "--rubrics"),
    val_fraction: float = typer.Option(0.01, "--val-fraction"),
    leak_policy: str = typer.Option("clean", "--leak-policy", help="clean | drop | keep"),
    low_confidence: str = _COMMON["low_confidence"],
    min_confidence: float = _COMMON["min_confidence"],
    cache: str | None = typer.Option(None, "--cache", help="teacher-call cache URI ('off' disables)"),
    work_dir: str | None = typer.Option(None, "--work-dir"),
    concurrency: int = typer.Option(8, "--concurrency"),
    retries: int = typer.Option(4, "--retries"),
    timeout: float = typer.Option(120.0, "--timeout"),
    rps: float | None = typer.Option(None, "--rate-limit"),
    limit: int | None = typer.Option(None, "--limit"),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Plan-then-score generation curation; prints the dataset URI and stats (JSON)."""
    from firm.curation.gen import GenCurationConfig, curate_gen

    _check_out(out, overwrite)
    cfg = GenCurationConfig(
        input=input, out=out, name=name, rubrics=rubrics, val_fraction=val_fraction, leak_policy=leak_policy,  # type: ignore[arg-type]
        balance=_balance(balance), cache=cache, work_dir=work_dir, limit=limit, overwrite=overwrite,  # type: ignore[arg-type]
        low_confidence=low_confidence, min_confidence=min_confidence,  # type: ignore[arg-type]
    )  # fmt: skip
    p = _teacher(planner, planner_model, concurrency, retries, timeout, rps)
    s = _teacher(scorer, scorer_model, concurrency, retries, timeout, rps)
    t0 = time.perf_counter()
    res = curate_gen(cfg, p, s)
    _done("generation curation", t0, res.uri, res.stats)
    echo_json({"uri": res.uri, "stats": res.stats})


@app.command("import-firm-edit")
@cli_errors
def import_edit_cmd(
    src: str = typer.Argument(..., help="a .jsonl/.parquet file of the release, or a directory of them"),
    out: str = typer.Option(..., "--out"),
    default_axis: str | None = typer.Option(
        None, "--axis", help="axis of rows that do not say (execution|consistency)"
    ),
    val_fraction: float = typer.Option(0.01, "--val-fraction"),
    limit: int | None = typer.Option(None, "--limit"),
    overwrite: bool = OverwriteOpt,
) -> None:
    """FIRM-Edit-370K → a critic SFT dataset (JSON: URI and stats)."""
    from firm.curation.importers import import_firm_edit

    uri, stats = import_firm_edit(
        src, out, default_axis=default_axis, val_fraction=val_fraction, limit=limit, overwrite=overwrite
    )
    echo_json({"uri": uri, "stats": stats})


@app.command("import-firm-gen")
@cli_errors
def import_gen_cmd(
    src: str = typer.Argument(..., help="a .jsonl/.parquet file of the release, or a directory of them"),
    out: str = typer.Option(..., "--out"),
    val_fraction: float = typer.Option(0.01, "--val-fraction"),
    limit: int | None = typer.Option(None, "--limit"),
    overwrite: bool = OverwriteOpt,
) -> None:
    """FIRM-Gen-293K → a critic SFT dataset (JSON: URI and stats)."""
    from firm.curation.importers import import_firm_gen

    uri, stats = import_firm_gen(src, out, val_fraction=val_fraction, limit=limit, overwrite=overwrite)
    echo_json({"uri": uri, "stats": stats})


@app.command("stats")
@cli_errors
def stats_cmd(
    uri: str = typer.Argument(..., help="a dataset directory or URI"),
    png: str | None = typer.Option(None, "--png", help="also write the score histogram here"),
    as_json: bool = typer.Option(False, "--json", help="print stats.json instead of the table"),
) -> None:
    """A dataset's counts per axis and score, drops and teacher usage (table or JSON); optionally the histogram."""
    from pathlib import Path

    from firm.curation.stats import histogram_png, read_stats, stats_table

    stats = read_stats(uri)
    if png:
        Path(png).write_bytes(histogram_png(stats))
    if as_json:
        echo_json(stats)
    else:
        echo_out(stats_table(stats))
