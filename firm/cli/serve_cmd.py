"""`firmctl serve`: Reward service on Triton: export, start, score."""

from __future__ import annotations

from pathlib import Path

import typer

from firm.cli._common import cli_errors, echo_json, echo_out

app = typer.Typer(help="Reward service on Triton: export, start, score.", no_args_is_help=True)


def _ints(text: str, what: str) -> list[int]:
    from firm.errors import InputError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}") from None


@app.command("export")
@cli_errors
def export(
    critic: str = typer.Option(..., help="Critic: local dir, file:// or s3:// URI, or a Hugging Face id."),
    task: str = typer.Option(
        ..., help="edit | gen | all: which reward model(s) to export next to firm_critic (critic: it alone)."
    ),
    out: str = typer.Option(
        ..., help="Target: local directory, or file:// / s3:// URI (published atomically)."
    ),
    engine: str = typer.Option(
        "python", help="python (transformers in the python backend) | vllm (GPU clusters)."
    ),
    device: str = typer.Option("cpu", help="cpu | gpu: instance_group KIND_CPU or KIND_GPU."),
    instances: int = typer.Option(1, help="Model instances per model (instance_group count)."),
    max_batch_size: int = typer.Option(32, help="max_batch_size of the reward models."),
    preferred_batch_size: str = typer.Option(
        "4,8,16", help="Preferred dynamic batch sizes, comma-separated."
    ),
    max_queue_delay_us: int = typer.Option(3000, help="Dynamic batching max queue delay (microseconds)."),
    dynamic_batching: bool = typer.Option(True, "--dynamic-batching/--no-dynamic-batching"),
    weights: str = typer.Option(
        "copy", help="copy the weights into the repository, or reference the critic URI."
    ),
    readout: str = typer.Option("text", help="text | expected."),
    rubrics: str | None = typer.Option(
        None, help="Rubric pack (name, YAML path or URI; default firm-v1), copied into the repository."
    ),
    max_pixels: int | None = typer.Option(
        None, help="Per-image pixel budget for every rubric (default: the pack's, else the processor's)."
    ),
    max_new_tokens: int | None = typer.Option(
        None, help="Answer budget for every rubric (default: the pack's per axis, e.g. 256 for edits)."
    ),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16."),
    threads: int = typer.Option(0, help="torch threads per model instance (0: torch's default)."),
    edit_formulation: str = typer.Option("cme", help="cme | sum | guard."),
    edit_w_base: float = typer.Option(0.6),
    edit_w_bonus: float = typer.Option(0.4),
    gen_w_base: float = typer.Option(0.4),
    gen_w_bonus: float = typer.Option(0.6),
    gen_quality: bool = typer.Option(
        True, "--gen-quality/--no-gen-quality", help="QMA (quality) or instruction only."
    ),
    policy: str = typer.Option(
        "skip", help="Unparsed answers: skip (reward null) | min_reward (0 + status)."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing, non-empty export (local or URI)."),
    vllm_models_root: str = typer.Option(
        "/models",
        help="--engine vllm: where the serving container mounts the repository (the Helm chart: /models/repo).",
    ),
) -> None:
    """Write a Triton model repository (firm_critic + reward model(s)) for a critic."""
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository
    from firm.storage.targets import check_target

    check_target(out, "--out", overwrite=overwrite)  # before the critic is read
    from firm.storage.model_ref import check_model_ref

    check_model_ref(critic, "--critic")
    cfg = ExportConfig(
        critic=critic,
        task=task,
        engine=engine,
        device=device,
        instances=instances,
        weights=weights,
        readout=readout,
        rubrics=rubrics,
        max_pixels=max_pixels,
        max_new_tokens=max_new_tokens,
        dtype=dtype,
        threads=threads,
        edit_formulation=edit_formulation,
        edit_w_base=edit_w_base,
        edit_w_bonus=edit_w_bonus,
        gen_w_base=gen_w_base,
        gen_w_bonus=gen_w_bonus,
        gen_quality=gen_quality,
        policy=policy,
        vllm_models_root=vllm_models_root,
        batching=BatchingConfig(
            enabled=dynamic_batching,
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
            preferred_batch_sizes=_ints(preferred_batch_size, "--preferred-batch-size"),
        ),
    )
    where = export_repository(cfg, out, overwrite=overwrite)
    from firm.rubric_store import load_pack

    echo_json(
        {"repository": where, "task": cfg.task, "engine": cfg.engine, "rubrics": load_pack(rubrics).ref}
    )


@app.command("start")
@cli_errors
def start(
    repository: str = typer.Option(..., help="Model repository: local dir, file:// or s3:// URI."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    grpc_port: int = typer.Option(8001, help="gRPC port (0: a free port)."),
    http_port: int = typer.Option(8000, help="HTTP port (0: a free port)."),
    metrics_port: int = typer.Option(8002, help="Prometheus metrics port (0: a free port)."),
    startup_timeout: float = typer.Option(300.0, help="Seconds to wait for every model to be ready."),
    log_file: Path | None = typer.Option(None, help="tritonserver log (default: a temp file, printed)."),
    live_dir: Path | None = typer.Option(
        None,
        help="Serve a live repository there (a copy of --repository on first start, kept across restarts) that "
        "`firmctl serve rollout` / `rollback` can change while serving.",
    ),
) -> None:
    """Run the bundled tritonserver on a repository until SIGTERM/SIGINT; prints the endpoints when ready."""
    import signal

    from firm.progress import Progress
    from firm.serving.server import ServerStartError, TritonServer

    served: str | Path = repository
    extra: list[str] = []
    if live_dir is not None:
        from firm.launch.rollout import LiveRepository, load_args

        live = LiveRepository.prepare(repository, live_dir)
        served, extra = live.path, load_args(live.models())
    server = TritonServer(
        served,
        extra_args=extra,
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        startup_timeout=startup_timeout,
        log_path=log_file,
    )

    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if server.is_running():
            server.send_signal(signal.SIGTERM)  # Triton drains in-flight requests and exits
        else:  # still fetching the repository: there is nothing to forward to, so stop here
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        # loading the models can take minutes: say so on stderr (a bar on a terminal, periodic lines elsewhere)
        with Progress(f"serve start {repository}: waiting for every model to be ready", unit=""):
            server.start()
    except ServerStartError:
        if not received:
            raise
        typer.echo(f"error: stopped by signal {received[0]} while tritonserver was starting", err=True)
        raise typer.Exit(128 + received[0]) from None
    ends = server.endpoints()
    typer.echo(
        f"serving {repository}: "
        + ", ".join(f"{k} {v}" for k, v in ends.items() if isinstance(v, str))
        + f"; log {server.log_path}; stop with Ctrl-C or SIGTERM",
        err=True,
    )
    echo_json({**ends, "log": str(server.log_path), "pid": server.process.pid if server.process else None})
    rc = server.wait()
    if rc != 0:
        from firm.serving.server import triton_error_line

        typer.echo(
            f"error: tritonserver exited with code {rc}: {triton_error_line(server.read_log())}", err=True
        )
        raise typer.Exit(1)


@app.command("score")
@cli_errors
def score(
    endpoint: str = typer.Option("", help="Triton gRPC endpoint host:port (default: FIRM_TRITON_URL)."),
    task: str = typer.Option(..., help="edit | gen."),
    source: str | None = typer.Option(None, help="edit: source image (path or URI)."),
    edited: str | None = typer.Option(None, help="edit: edited image (path or URI)."),
    instruction: str | None = typer.Option(None, help="edit: the editing instruction."),
    image: str | None = typer.Option(None, help="gen: the generated image (path or URI)."),
    prompt: str | None = typer.Option(None, help="gen: the prompt."),
    timeout: float = typer.Option(60.0, help="Per-request deadline in seconds."),
) -> None:
    """Score one edit or one generated image through the reward service; prints the RewardBreakdown as JSON."""
    from firm.config import get_settings
    from firm.errors import InputError
    from firm.serving.client import RewardClient

    url = endpoint or get_settings().triton_url
    if task == "edit":
        missing = [
            n
            for n, v in (("--source", source), ("--edited", edited), ("--instruction", instruction))
            if not v
        ]
        if missing:
            raise InputError(f"--task edit needs {', '.join(missing)}")
    elif task == "gen":
        missing = [n for n, v in (("--image", image), ("--prompt", prompt)) if not v]
        if missing:
            raise InputError(f"--task gen needs {', '.join(missing)}")
    else:
        raise InputError(f"--task must be edit or gen, got {task!r}")
    with RewardClient(url, timeout=timeout, retries=2) as client:
        if task == "edit":
            result = client.score_edit([(source, edited, instruction)])[0]
        else:
            result = client.score_gen([(image, prompt)])[0]
    echo_json(result)


@app.command("rollout")
@cli_errors
def rollout(
    service: str = typer.Option(..., help="The running reward service (its name)."),
    candidate: str = typer.Option(..., help="The candidate's exported repository (dir or URI)."),
    audit: str = typer.Option(..., help="Audit set: a FIRM-Bench slice with human scores (dir or URI)."),
    margin: float = typer.Option(0.1, help="Largest MAE increase over the incumbent still promoted."),
    who: str | None = typer.Option(None, help="Recorded as who promoted (default: user@host)."),
) -> None:
    """Serve a candidate critic beside the incumbent, bench both live, promote it only if it is not worse."""
    from firm.launch.rollout import rollout as run

    echo_json(run(service, candidate, audit, margin=margin, who=who))


@app.command("rollback")
@cli_errors
def rollback(
    service: str | None = typer.Option(None, help="--target local: the running reward service."),
    target: str = typer.Option(
        "local",
        help="local | kubernetes: the Helm chart's reward Deployment of --model (as the deploy step).",
    ),
    model: str = typer.Option(
        "edit", help="--target kubernetes: which reward model of the chart (edit | gen)."
    ),
    namespace: str | None = typer.Option(
        None,
        help="--target kubernetes: the chart's namespace (default: cluster.reward_namespace, else namespace).",
    ),
    timeout: float = typer.Option(
        1800.0, help="--target kubernetes: seconds to wait for the rolling update."
    ),
    poll: float = typer.Option(5.0, help="--target kubernetes: seconds between readiness checks."),
    who: str | None = typer.Option(None, help="Recorded as who rolled back (default: user@host)."),
) -> None:
    """Serve the critic version that served before the current one again (recorded in `firmctl serve history`; on a
    cluster, the history of the reward Deployment's name)."""
    from firm.errors import InputError

    if target == "kubernetes":
        if service:
            raise InputError("--service: with --target kubernetes the reward Deployment is chosen by --model")
        from firm.launch.reward_service import rollback_reward_service

        echo_json(
            rollback_reward_service(model=model, namespace=namespace, who=who, timeout=timeout, poll=poll)
        )
        return
    if target != "local":
        raise InputError(f"--target must be local or kubernetes, got {target!r}")
    if not service:
        raise InputError("--service is required with --target local")
    from firm.launch.rollout import rollback as run

    echo_json(run(service, who=who))


@app.command("history")
@cli_errors
def history(service: str = typer.Option(..., help="The reward service.")) -> None:
    """Every promotion, refusal and rollback of a reward service (from the object store), oldest first."""
    from firm.launch.rollout import history as read

    echo_json([e.model_dump(mode="json") for e in read(service)])


@app.command("resolve-repository")
@cli_errors
def resolve_repository(
    service: str = typer.Option(..., help="The reward service (on a cluster: the reward Deployment's name)."),
    default: str = typer.Option(
        "", help="Served when no promotion is recorded: the pod annotation firm.dev/model-repository."
    ),
    deployed_at: str = typer.Option(
        "", help="When --default was rolled out (annotation firm.dev/deployed-at): if later, it wins."
    ),
    fetch: str | None = typer.Option(
        None, help="Also download and verify the resolved repository into this (empty) directory."
    ),
) -> None:
    """Print the repository a reward pod serves: the promoted critic (`current.json` in the object store), else
    --default. With --fetch, download it too (the chart's init container)."""
    from firm.errors import InputError
    from firm.launch.rollout import resolve_repository as resolve

    uri = resolve(service, default, deployed_at=deployed_at or None)
    if not uri:
        raise InputError(f"--default: no repository for {service!r} and no promotion recorded")
    if fetch:
        from firm.storage import fetch_dir

        fetch_dir(uri, fetch)
    echo_out(uri)


@app.command("stage-rollout")
@cli_errors
def stage_rollout(
    incumbent: str = typer.Option(..., help="The repository the reward service serves now (dir or URI)."),
    candidate: str = typer.Option(..., help="The candidate's exported repository (dir or URI)."),
    directory: Path = typer.Option(..., "--dir", help="Where to build the repository (fresh or empty)."),
) -> None:
    """Build one Triton repository serving the incumbent's models and the candidate's under `_candidate` names,
    each fetched and verified (the chart's candidate pod: the deploy step benches both through it). Prints the
    models it serves."""
    from firm.launch.rollout import stage_rollout as stage

    echo_json(stage(incumbent, candidate, directory))
