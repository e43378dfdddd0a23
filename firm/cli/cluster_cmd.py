"""`firmctl cluster`: is the Kubernetes cluster ready for FIRM? (`doctor`; the checks are `firm.launch.doctor`)."""

from __future__ import annotations

import typer

from firm.cli._common import cli_errors, echo_json, result_stream

app = typer.Typer(help="The Kubernetes cluster FIRM runs on: what is installed, allowed and reachable.",
                  no_args_is_help=True)  # fmt: skip


@app.command("doctor")
@cli_errors
def doctor_cmd(
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="namespace of FIRM's jobs (default: FIRM_NAMESPACE)"
    ),
    pipeline_namespace: str | None = typer.Option(
        None,
        "--pipeline-namespace",
        help="where pipeline steps run (multi-user Kubeflow: the profile namespace)",
    ),
    kfp_namespace: str = typer.Option(
        "kubeflow", "--kfp-namespace", help="namespace Kubeflow Pipelines runs in"
    ),
    network: bool = typer.Option(
        True, "--network/--no-network", help="try the object store and reward service"
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
) -> None:
    """Operators (Training Operator, Trainer v2, KFP and its version, gang schedulers), the pipeline and training
    ServiceAccounts' permissions, the ConfigMaps and Secrets each namespace needs, Istio injection, node pools and
    GPUs, and the object store: ✓ / ✗ with a fix per ✗. Exits 1 on any ✗."""
    from firm.launch.doctor import cluster_doctor

    report = cluster_doctor(namespace, pipeline_namespace, kfp_namespace, network=network)
    if as_json:
        echo_json({**report.model_dump(mode="json"), "ok": report.ok})
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="FIRM cluster doctor", show_lines=False)
        for col in ("", "area", "check", "detail", "fix"):
            table.add_column(col, overflow="fold")
        marks = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]·[/]"}
        for c in report.checks:
            table.add_row(marks[c.ok], c.area, c.name, c.detail, c.fix)
        out = result_stream()
        console = Console(file=out, width=max(Console(file=out).width, 160))
        console.print(table)
        failed = sum(c.ok is False for c in report.checks)
        console.print(
            f"training backends: {', '.join(report.training_backends) or 'none'}; "
            + ("[green]ready[/]" if report.ok else f"[red]{failed} problem(s)[/]")
        )
    if not report.ok:
        raise typer.Exit(1)
