"""`firmctl job`: distributed training jobs (critic SFT, RL) on a cluster (PyTorchJob or TrainJob) or on this
machine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import typer

from firm.cli._common import cli_errors, echo_json, echo_out, result_stream

if TYPE_CHECKING:
    from firm.launch.backend import JobBackend
    from firm.launch.spec import ResolvedJob

app = typer.Typer(
    help="Distributed training jobs from one spec: PyTorchJobs on a cluster, or torchrun on this machine.",
    no_args_is_help=True,
)

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
BackendOpt = typer.Option(
    None,
    "--backend",
    help="pytorchjob | trainjob | auto | local (default: the cluster settings' job_backend; auto: what the "
    "cluster has installed, Kubeflow Trainer v2 first)",
)
NamespaceOpt = typer.Option(None, "--namespace", "-n", help="Kubernetes namespace (default: FIRM_NAMESPACE)")


def _backend(name: str | None, namespace: str | None = None) -> JobBackend:
    from firm.launch.backend import JobError
    from firm.launch.backends import get_backend

    if name not in (None, "local", "pytorchjob", "trainjob", "auto"):
        raise JobError(f"--backend must be local, pytorchjob, trainjob or auto, got {name!r}")
    return get_backend(name, namespace=namespace)  # type: ignore[arg-type]


def _resolve(
    config: str, overrides: list[str], backend: Literal["local", "pytorchjob", "trainjob"]
) -> ResolvedJob:
    from firm.launch.spec import load_job_spec, resolve_job

    return resolve_job(load_job_spec(config, overrides), backend)


@app.command("render", context_settings=_EXTRA)
@cli_errors
def render_cmd(
    ctx: typer.Context,
    config: str = typer.Option(
        ..., "--config", help="job spec YAML (e.g. k8s/jobs/critic-sft-qwen3vl-8b-1x8.yaml)"
    ),
    namespace: str | None = NamespaceOpt,
    backend: str = typer.Option(
        "pytorchjob",
        "--backend",
        help="pytorchjob (a PyTorchJob) | trainjob (a Kubeflow Trainer v2 TrainJob)",
    ),
) -> None:
    """Print the PyTorchJob (or TrainJob) YAML of a job spec; nothing is applied. Extra `key=value` arguments
    override the spec (`nodes=2`, `image=...`); `recipe.<key>=<value>` overrides the recipe (`recipe.optim.lr=2e-5`)."""
    from firm.config import get_settings
    from firm.errors import InputError
    from firm.launch.render import render_yaml
    from firm.launch.trainjob_render import render_trainjob_yaml

    if backend not in ("pytorchjob", "trainjob"):
        raise InputError(f"--backend: render makes a pytorchjob or a trainjob, got {backend!r}")
    job = _resolve(config, list(ctx.args), backend)  # type: ignore[arg-type]
    if job.upload is not None:
        typer.echo(f"note: submit uploads recipe {job.upload[0]} to {job.upload[1]}", err=True)
    settings = get_settings()
    ns = namespace or settings.namespace
    out = result_stream()
    out.write(
        render_trainjob_yaml(job, ns, settings.cluster.trainjob_runtime)
        if backend == "trainjob"
        else render_yaml(job, ns)
    )
    out.flush()


@app.command("submit", context_settings=_EXTRA)
@cli_errors
def submit_cmd(
    ctx: typer.Context,
    config: str = typer.Option(..., "--config", help="job spec YAML"),
    backend: str | None = BackendOpt,
    namespace: str | None = NamespaceOpt,
    follow: bool = typer.Option(
        False, "--follow", "-f", help="stream rank 0's log, exit with the job's result"
    ),
    wait: bool = typer.Option(False, "--wait", help="wait for the job to end, exit with its result"),
    timeout: float | None = typer.Option(
        None, "--timeout", help="with --wait/--follow: give up after S seconds"
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue from the checkpoints already under the job's checkpoint prefix"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="remove what is under the job's checkpoint prefix first"
    ),
) -> None:
    """Submit a job spec (validated first: nothing starts when the spec, pool or recipe is wrong). Prints the job's
    status as JSON; with --wait or --follow, exits non-zero unless the job succeeded. A non-empty checkpoint prefix
    is refused unless --resume (continue it) or --overwrite; a cluster job's s3:// prefix is checked when this
    machine reaches that object store (its settings name the endpoint and credentials), else noted as unchecked."""
    from firm.errors import InputError

    if resume and overwrite:
        raise InputError("--resume and --overwrite: choose one")
    b = _backend(backend, namespace)
    job = _resolve(config, list(ctx.args), b.name)
    # a job the backend knows has its own rules: a finished one is refused, a failed one resumes from its
    # checkpoints
    if not _known(b, job.name):
        _check_prefix(job, b.name, resume=resume, overwrite=overwrite)
    status = b.submit(job)
    if status.attempts > 1:
        typer.echo(f"job {job.name}: attempt {status.attempts}, resuming from its last checkpoint", err=True)
    if not (follow or wait):
        echo_json(status)
        return
    if follow:
        for line in b.logs(job.name, "master", 0, follow=True):
            echo_out(line)
    status = b.wait(job.name, timeout=timeout, poll=1.0 if b.name == "local" else 5.0)
    if follow:
        typer.echo(
            f"job {job.name}: {status.phase}{f' — {status.message}' if status.message else ''}", err=True
        )
    else:
        echo_json(status)
    if not status.succeeded:
        typer.echo(
            f"error: job {job.name} {status.phase.lower()}: {status.message or 'see its logs'}", err=True
        )
        raise typer.Exit(1)


def _known(b: JobBackend, name: str) -> bool:
    """Whether the backend already has a job of this name (an unreachable cluster counts as no)."""
    from firm.launch.backend import JobError

    try:
        b.status(name)
    except JobError:  # JobNotFound, or nothing to ask
        return False
    return True


def _check_prefix(job: ResolvedJob, backend: str, *, resume: bool, overwrite: bool) -> None:
    """The shared refusal (`firm.storage.targets`) of a job into a non-empty checkpoint prefix. The s3:// prefix of
    a cluster job lives in the cluster's object store: it is checked when that store is reachable from this machine
    too (the local settings name an S3 endpoint and credentials that answer, e.g. a dev cluster's MinIO
    port-forwarded), and skipped with a one-line note otherwise (the job's pods would resume what is there)."""
    from firm.storage.targets import check_target, clear_target

    prefix = job.checkpoint_uri
    if resume:
        return
    if backend != "local" and prefix.startswith("s3://"):
        why = _store_unreachable(prefix)
        if why is not None:
            typer.echo(
                f"note: checkpoint prefix {prefix} not checked for earlier checkpoints: {why}; the job's pods "
                "resume what is there (--overwrite clears it only where it can be reached)",
                err=True,
            )
            return
    if check_target(prefix, "checkpoint prefix", overwrite=overwrite, resume="--resume"):
        clear_target(prefix)


def _store_unreachable(uri: str) -> str | None:
    """Why this machine cannot read the object store of an s3:// `uri` (None: it can). One quick request: no
    credentials in the local settings, an endpoint that does not answer, or access denied."""
    from firm.config import get_settings
    from firm.errors import FirmError
    from firm.storage.s3 import RetryPolicy, S3Store, endpoint_from_settings, make_client
    from firm.storage.uris import parse_uri

    settings = get_settings()
    try:
        bucket = parse_uri(uri).bucket
        ep = endpoint_from_settings(settings)
        client = make_client(settings, what="this machine's object store settings")
        S3Store(client, bucket, ep.host, ep.region, RetryPolicy(attempts=1)).bucket_exists()
    except FirmError as exc:
        return f"the object store is not reachable from here ({exc})"
    return None


@app.command("status")
@cli_errors
def status_cmd(
    name: str = typer.Argument(..., help="job name"),
    backend: str | None = BackendOpt,
    namespace: str | None = NamespaceOpt,
) -> None:
    """The job's phase, times, replica counts and last message (JSON)."""
    echo_json(_backend(backend, namespace).status(name))


@app.command("logs")
@cli_errors
def logs_cmd(
    name: str = typer.Argument(..., help="job name"),
    replica: str = typer.Option("master", "--replica", help="master (rank 0's node) or worker"),
    index: int = typer.Option(0, "--index", help="replica index (workers: 0 .. nodes-2)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep streaming until the replica ends"),
    backend: str | None = BackendOpt,
    namespace: str | None = NamespaceOpt,
) -> None:
    """Print one replica's log (the master is rank 0)."""
    for line in _backend(backend, namespace).logs(name, replica, index, follow=follow):
        echo_out(line)


@app.command("cancel")
@cli_errors
def cancel_cmd(
    name: str = typer.Argument(..., help="job name"),
    backend: str | None = BackendOpt,
    namespace: str | None = NamespaceOpt,
) -> None:
    """Stop every process of the job (a PyTorchJob is deleted). Published checkpoints stay; submitting the job
    again with --resume continues from the last one."""
    echo_json(_backend(backend, namespace).cancel(name))


@app.command("list")
@cli_errors
def list_cmd(
    backend: str | None = BackendOpt,
    namespace: str | None = NamespaceOpt,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
) -> None:
    """Jobs of the backend (a namespace's PyTorchJobs or TrainJobs, or this machine's local jobs)."""
    jobs = _backend(backend, namespace).list()
    if as_json:
        echo_json(jobs)
        return
    if not jobs:
        typer.echo("no jobs", err=True)
        return
    width = max(len(j.name) for j in jobs)
    for j in jobs:
        created = j.created.strftime("%Y-%m-%d %H:%M") if j.created else "-"
        echo_out(f"{j.name:<{width}}  {j.phase:<10}  {created}  {j.message}")
