"""Launcher components: run critic SFT / RL as a distributed job (`firm.launch.runner.run_job`) and wait for it.

The job is a PyTorchJob on the GPU pool (backend `pytorchjob`) or torchrun on the runner's machine (`local`). The
step streams rank 0's log into its own and fails with the job's error; `timeout_s` is also the job's deadline. A
restarted step re-attaches to its job (named by the run ID); only a terminated run cancels it.
"""

from kfp.dsl import HTML, Metrics, Model, Output

from pipelines.components import component


@component
def train_critic(
    recipe: str,
    overrides: list,
    dataset_uri: str,
    base_model: str,
    run_id: str,
    pool: str,
    nodes: int,
    nproc_per_node: int,
    image: str,
    backend: str,
    timeout_s: float,
    rubrics: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    """Critic SFT of `recipe` on `dataset_uri` with rubric pack `rubrics` ("": the recipe's); returns the URI of the
    published `save_pretrained` critic (which records the pack in firm_rubrics.json)."""
    from firm.launch.runner import run_job
    from firm.launch.spec import step_job_spec

    extra = [f"data.dataset={dataset_uri}", *([f"model.path={base_model}"] if base_model else [])]
    extra += [f"rubrics={rubrics}"] if rubrics else []
    spec = step_job_spec(
        "sft", run_id, recipe=recipe, overrides=[*overrides, *extra], pool=pool, nodes=nodes,
        nproc_per_node=nproc_per_node, image=image, timeout_s=timeout_s,
    )  # fmt: skip
    run = run_job(spec, backend, timeout=timeout_s or None)  # type: ignore[arg-type]
    uri = f"{run.job.checkpoint_uri}/export"
    model.metadata.update(
        {"firm_uri": uri, "checkpoints": f"{run.job.checkpoint_uri}/checkpoints", "recipe": recipe}
    )
    for key, value in ((run.result or {}).get("final_eval") or {}).items():
        if value is not None:  # null: undefined (e.g. val/mae when no answer parsed)
            metrics.log_metric(key.replace("/", "_"), float(value))
    return uri


@component
def rl_train(
    recipe: str,
    overrides: list,
    reward_url: str,
    run_id: str,
    pool: str,
    nodes: int,
    nproc_per_node: int,
    image: str,
    backend: str,
    timeout_s: float,
    lora: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    gallery: Output[HTML],
) -> str:
    """RL of `recipe` with rewards from the reward service at `reward_url`; returns the final LoRA's URI. `gallery`:
    the critic audit's rationale gallery (`firm.rl.audit`). A run a reward-hacking alarm stopped fails the step with
    its `error: stopped_by_alarm: ...` line (the alarm, its step and values) after writing `curves` and `gallery`
    (the samples the alarm flagged); the line names `firmctl rl report <output_uri>`, as KFP keeps no output artifact
    of a failed step but its log."""
    from firm.launch.backend import JobError
    from firm.launch.backends import get_backend
    from firm.launch.runner import run_job
    from firm.launch.spec import resolve_job, step_job_spec
    from firm.rl.alarms import STOPPED_BY_ALARM
    from firm.rl.report import curves_html, gallery_page, read_run_metrics

    extra = ["reward.kind=triton", f"reward.url={reward_url}"] if reward_url else []
    spec = step_job_spec(
        "rl", run_id, recipe=recipe, overrides=[*overrides, *extra], pool=pool, nodes=nodes,
        nproc_per_node=nproc_per_node, image=image, timeout_s=timeout_s,
    )  # fmt: skip

    def publish(output_uri: str) -> None:
        with open(curves.path, "w") as f:
            f.write(curves_html(read_run_metrics(output_uri), title=f"RL rewards — {recipe}"))
        with open(gallery.path, "w") as f:
            f.write(gallery_page(output_uri, title=f"RL critic audit — {recipe}"))

    try:
        run = run_job(spec, backend, timeout=timeout_s or None)  # type: ignore[arg-type]
    except JobError:
        b = get_backend(backend)  # type: ignore[arg-type]
        job = resolve_job(spec, b.name)
        try:
            st = b.status(job.name)
        except JobError:
            raise  # the job's own error (above) is the step's
        if st.reason != STOPPED_BY_ALARM:
            raise
        # the gallery shows what the alarm saw; KFP's launcher records only the executor log of a failed step, so
        # the error line also names where the gallery stays (`firmctl rl report` writes it to a local file)
        try:
            publish(job.checkpoint_uri)
        except Exception as exc:  # the alarm line stays the step's error
            print(f"[firm] the run's curves and gallery could not be written: {exc}")
        at = st.message.find(f"{STOPPED_BY_ALARM}:")
        line = st.message[at:] if at >= 0 else f"{STOPPED_BY_ALARM}: {st.message or 'see the job log above'}"
        raise JobError(f"{line} (job {job.name}; gallery: firmctl rl report {job.checkpoint_uri})") from None
    uri = f"{run.job.checkpoint_uri}/final/lora"
    lora.metadata.update({"firm_uri": uri, "output_uri": run.job.checkpoint_uri, "recipe": recipe})
    last = {**((run.result or {}).get("last") or {}), **((run.result or {}).get("audit") or {})}
    for key, value in last.items():
        if isinstance(value, int | float) and key.startswith(("reward/", "hacking/", "audit/")):
            metrics.log_metric(key.replace("/", "_"), float(value))
    publish(run.job.checkpoint_uri)
    return uri
