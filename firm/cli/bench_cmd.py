"""`firmctl bench`: FIRM-Bench: evaluate critics against human scores.

- `score` — metrics from a predictions file and a human-scores file; prints report.json to stdout.
- `run` — judge a bench with a critic (checkpoint, OpenAI-compatible endpoint, random baseline), resumable, and
  write predictions + report.json/md/html + plots.
- `make-synthetic` — a small known-answer bench from generated images.
- `import-firm` — convert the public FIRM-Bench release into our layout (optionally publish it).
"""

from __future__ import annotations

import typer

from firm.cli._common import cli_errors, echo_json
from firm.cli.rubrics_cmd import RUBRICS_HELP
from firm.errors import InputError

app = typer.Typer(help="FIRM-Bench: evaluate critics against human scores.", no_args_is_help=True)

_POLICY_HELP = "how unparseable answers count: worst (farthest score from the human one; default) | exclude"


def _policy(value: str) -> str:
    from firm.bench.metrics import PARSE_FAILURE_POLICIES

    if value not in PARSE_FAILURE_POLICIES:
        raise InputError(f"--parse-failure must be worst or exclude, got {value!r}")
    return value


@app.command("score")
@cli_errors
def score_cmd(
    predictions: str = typer.Option(..., "--predictions", help='JSONL rows {"id": ..., "score": k | null}'),
    human: str = typer.Option(
        ..., "--human", help='JSONL rows {"id", "task", "axis", "difficulty", "human_score"}'
    ),
    parse_failure: str = typer.Option("worst", "--parse-failure", help=_POLICY_HELP),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="bootstrap resamples for the 95% CI of each MAE"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
) -> None:
    """Print report.json (edit.execution/consistency/overall, gen.easy/hard/overall; empty groups are null)."""
    from firm.bench.metrics import report_json
    from firm.bench.scoring import score_files

    report = score_files(predictions, human, policy=_policy(parse_failure), n_boot=bootstrap, seed=seed)  # type: ignore[arg-type]
    echo_json(report_json(report))


@app.command("run")
@cli_errors
def run_cmd(
    critic: str = typer.Option(
        ...,
        "--critic",
        help="checkpoint (HF id, path, file:// or s3:// URI) | http(s)://host:port or http(s)://host:port/v1 or "
        "openai://host:port "
        "(OpenAI-compatible; model via --model or FIRM_OPENAI_MODEL, key via FIRM_OPENAI_API_KEY) | "
        "random://SEED (chance baseline) | triton://host:port or triton://host:port,host:port (FIRM reward "
        "service, gRPC)",
    ),
    bench: str = typer.Option(
        ..., "--bench", help="bench directory, or a published file:// / s3:// dataset URI"
    ),
    out: str = typer.Option(
        ..., "--out", help="output directory (a non-empty one needs --resume or --overwrite)"
    ),
    limit: int | None = typer.Option(None, "--limit", help="evaluate only the first N items"),
    model: str | None = typer.Option(None, "--model", help="model name for OpenAI-compatible endpoints"),
    batch_size: int = typer.Option(8, "--batch-size", help="items per critic call"),
    concurrency: int = typer.Option(
        8, "--concurrency", help="parallel requests to an OpenAI-compatible endpoint"
    ),
    readout: str = typer.Option("text", "--readout", help="local critic readout: text | expected"),
    device: str | None = typer.Option(None, "--device", help="local critic device (default: the critic's)"),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="answer length cap (local critic; max_tokens for endpoints)"
    ),
    parse_failure: str = typer.Option("worst", "--parse-failure", help=_POLICY_HELP),
    rubrics: str | None = typer.Option(
        None, "--rubrics", help=RUBRICS_HELP + " (local critic and endpoints; default firm-v1)"
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue the run in --out: items already scored there are skipped"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace what is in a non-empty --out"),
) -> None:
    """Judge the bench with a critic, then write predictions.jsonl and the reports into --out. A non-empty --out
    is refused unless --resume (continue that run) or --overwrite (start over)."""
    from firm.bench.backends import make_backend
    from firm.bench.loaders import load_bench
    from firm.bench.metrics import report_json
    from firm.bench.runner import run_bench
    from firm.storage.targets import check_target, clear_target

    if resume and overwrite:
        raise InputError("--resume and --overwrite: choose one")
    replace = not resume and check_target(out, "--out", overwrite=overwrite, resume="--resume")
    if readout not in ("text", "expected"):
        raise InputError(f"--readout must be text or expected, got {readout!r}")
    policy = _policy(parse_failure)
    the_bench = load_bench(bench)
    backend = make_backend(
        critic,
        model=model,
        readout=readout,  # type: ignore[arg-type]
        batch_size=batch_size,
        concurrency=concurrency,
        device=device,
        max_new_tokens=max_new_tokens,
        rubrics=rubrics,
    )
    import time

    from firm.progress import print_done

    t0 = time.perf_counter()
    if replace:
        clear_target(out)
    try:
        result = run_bench(backend, the_bench, out, limit=limit, batch_size=batch_size, policy=policy)  # type: ignore[arg-type]
    finally:
        backend.close()
    print_done(
        f"bench, judged {result.judged} item(s) (skipped {result.skipped} already scored)", time.perf_counter() - t0,
        f"report in {result.out_dir}",
    )  # fmt: skip
    echo_json(report_json(result.report))


@app.command("make-synthetic")
@cli_errors
def make_synthetic_cmd(
    out: str = typer.Option(..., "--out", help="output bench directory"),
    n: int = typer.Option(..., "--n", help="items per task (n edit + n gen)"),
    seed: int = typer.Option(0, "--seed"),
    size: int = typer.Option(64, "--size", help="image side in pixels"),
) -> None:
    """Write a small known-answer bench (bench.jsonl, human.jsonl, images/)."""
    from firm.bench.synthetic import make_synthetic_bench

    b = make_synthetic_bench(out, n, seed=seed, size=size)
    echo_json({"bench": str(b.root), "items": len(b.items)})


@app.command("import-firm")
@cli_errors
def import_firm_cmd(
    release: str = typer.Option(
        ..., "--release", help="local copy of the FIRM-Bench release (HF VisionXLab/FIRM-Bench)"
    ),
    out: str = typer.Option(..., "--out", help="output bench directory"),
    publish: str | None = typer.Option(
        None, "--publish", help="also publish it to this file:// or s3:// URI"
    ),
) -> None:
    """Convert the public FIRM-Bench release into FIRM's bench layout."""
    from firm.bench.loaders import import_firm_release, publish_bench

    b = import_firm_release(release, out)
    result: dict[str, object] = {"bench": str(b.root), "items": len(b.items)}
    if publish:
        publish_bench(out, publish)
        result["published"] = publish
    echo_json(result)
