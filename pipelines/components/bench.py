"""`bench_critic`: FIRM-Bench of a critic (a model URI, `triton://host:port`, or an OpenAI-compatible URL)."""

from kfp.dsl import HTML, Markdown, Metrics, Output

from pipelines.components import component


@component
def bench_critic(
    critic: str,
    bench: str,
    n_items: int,
    max_new_tokens: int,
    batch_size: int,
    rubrics: str,
    run_id: str,
    report: Output[HTML],
    metrics: Output[Metrics],
    summary: Output[Markdown],
) -> str:
    """`bench`: `synthetic` or a published bench URI; `rubrics` "" = firm-v1 (a triton:// critic asks with its own).
    Logs MAE/within-1/Pearson/parse-failure rate per axis and split; returns the URI of the published report."""
    import tempfile
    from pathlib import Path

    from firm.bench.backends import make_backend
    from firm.bench.loaders import load_bench
    from firm.bench.runner import run_bench
    from firm.bench.synthetic import publish_synthetic_bench
    from firm.config import get_settings
    from firm.storage import publish_dir

    bench_uri = publish_synthetic_bench(n_items) if bench == "synthetic" else bench
    backend = make_backend(
        critic, max_new_tokens=max_new_tokens or None, batch_size=batch_size, rubrics=rubrics or None
    )
    with tempfile.TemporaryDirectory(prefix="firm-bench-") as tmp:
        result = run_bench(backend, load_bench(bench_uri), tmp, batch_size=batch_size, progress=False)
        uri = f"{get_settings().bucket_uris()['models']}/runs/{run_id}/bench-report"
        publish_dir(tmp, uri, producer="pipelines.bench_critic")
        Path(report.path).write_text(Path(result.files["report.html"]).read_text())
        Path(summary.path).write_text(Path(result.files["report.md"]).read_text())
    for key, value in result.report.flat_metrics().items():
        metrics.log_metric(key.replace("/", "_"), value)
    report.metadata.update(
        {"firm_uri": uri, "bench": bench_uri, "critic": critic, "rubrics": backend.rubrics}
    )
    return uri
