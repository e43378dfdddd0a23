"""`firmctl pipeline`: FIRM's Kubeflow Pipelines — list, compile, run locally, submit to a KFP endpoint, upload."""

from __future__ import annotations

from pathlib import Path

import typer

from firm.cli._common import cli_errors, echo_json, echo_out

app = typer.Typer(
    help="FIRM's Kubeflow Pipelines (firm, critic, rl, bench): compile, run locally, submit.",
    no_args_is_help=True,
)
ParamOpt = typer.Option([], "--param", "-p", help="pipeline parameter key=value (repeatable)")
KfpNamespaceOpt = typer.Option(
    None, "--namespace", "-n", help="multi-user Kubeflow: the profile namespace (default: FIRM_NAMESPACE)"
)
KfpVersionOpt = typer.Option(
    None,
    "--kfp-version",
    help="the KFP release, when the endpoint does not report it (checked against the minimum)",
)


@app.command("list")
@cli_errors
def list_cmd(as_json: bool = typer.Option(False, "--json", help="JSON instead of text")) -> None:
    """The shipped pipelines and their parameters (type and default)."""
    from pipelines.api import list_pipelines

    infos = list_pipelines()
    if as_json:
        echo_json(infos)
        return
    for info in infos:
        echo_out(f"{info.name}: {info.description}")
        for name, p in info.parameters.items():
            echo_out(f"    {name} ({p['type']}) = {p['default']!r}")


@app.command("compile")
@cli_errors
def compile_cmd(
    out: Path = typer.Option(Path("pipelines/compiled"), "--out", help="directory for <name>.yaml"),
) -> None:
    """Compile every pipeline to KFP IR YAML (upload it in the KFP UI). Placement (pools, Secrets, images) comes
    from the current FIRM settings."""
    from pipelines.api import compile_all

    echo_json({"compiled": [str(p) for p in compile_all(out)]})


@app.command("run")
@cli_errors
def run_cmd(
    name: str = typer.Argument(..., help="firm | critic | rl | bench"),
    local: bool = typer.Option(False, "--local", help="run with the KFP local runner on this machine"),
    params: list[str] = ParamOpt,
    pipeline_root: Path | None = typer.Option(None, "--pipeline-root", help="where step artifacts go"),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="show every step's whole output (by default it goes to the step's log)"
    ),
) -> None:
    """Run a pipeline on this machine (`--local`): the same DAG as on a cluster, with backend=local (torchrun jobs,
    the local object store, the bundled tritonserver). Prints one line per step on stderr — each step's whole output
    goes to RUN_DIR/logs/STEP.log; on failure the step's last lines and its log — then a JSON summary on stdout."""
    from firm.errors import ConfigError
    from pipelines.api import run_local

    if not local:
        raise ConfigError(
            "'firmctl pipeline run' runs pipelines on this machine: add --local (use 'submit' for KFP)"
        )
    result = run_local(name, params, pipeline_root=pipeline_root, verbose=verbose)
    echo_json(result)


@app.command("submit")
@cli_errors
def submit_cmd(
    name: str = typer.Argument(..., help="firm | critic | rl | bench"),
    host: str = typer.Option(..., "--host", help="KFP API endpoint, e.g. https://kfp.example/pipeline"),
    params: list[str] = ParamOpt,
    experiment: str = typer.Option("firm", "--experiment", help="KFP experiment"),
    service_account: str | None = typer.Option(
        None, "--service-account", help="default: the cluster settings' pipeline_service_account"
    ),
    namespace: str | None = KfpNamespaceOpt,
    kfp_version: str | None = KfpVersionOpt,
) -> None:
    """Upload (or reuse) the pipeline version and start a run on Kubeflow Pipelines; prints the run's URL. A bearer
    token comes from KFP_TOKEN or the projected token at KF_PIPELINES_SA_TOKEN_PATH."""
    from pipelines.api import submit

    echo_out(
        submit(
            name, params, host=host, experiment=experiment, service_account=service_account, namespace=namespace,
            kfp_version=kfp_version,
        )
    )  # fmt: skip


@app.command("upload")
@cli_errors
def upload_cmd(
    host: str = typer.Option(..., "--host", help="KFP API endpoint"),
    compiled: Path | None = typer.Option(
        None,
        "--compiled",
        help="upload these compiled files (<name>.yaml) instead of compiling from the settings",
    ),
    label: str | None = typer.Option(
        None, "--version-label", help="prefix of the version names (the chart: <chart version>-<values hash>)"
    ),
    namespace: str | None = KfpNamespaceOpt,
    kfp_version: str | None = KfpVersionOpt,
) -> None:
    """Compile every pipeline from the current settings (images, node pools, Secret and ServiceAccount names) and
    upload it to KFP: new pipelines, or new versions named by label and content. Refuses a KFP older than the
    minimum its compiled pipelines need."""
    from pipelines.api import upload_all

    result = upload_all(host, compiled, label=label, namespace=namespace, kfp_version=kfp_version)
    echo_json({k: {"pipeline_id": v[0], "version_id": v[1]} for k, v in result.items()})
