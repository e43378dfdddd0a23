"""Serving components: export a critic as a Triton model repository, deploy it as the reward service, stop it."""

from kfp.dsl import Artifact, Model, Output

from pipelines.components import component


@component
def export_to_triton(
    critic_uri: str,
    task: str,
    device: str,
    max_new_tokens: int,
    rubrics: str,
    run_id: str,
    repository: Output[Model],
    gen_quality: bool = True,
) -> str:
    """`firmctl serve export` as a step: publishes the repository under the run and returns its URI.
    `max_new_tokens` 0 and `rubrics` "" mean the pack's budgets and firm-v1; `gen_quality` False serves the
    generation reward from the instruction axis alone (a critic trained without the quality rubric)."""
    from firm.config import get_settings
    from firm.rubric_store import load_pack
    from firm.serving.export import ExportConfig, export_repository

    uri = f"{get_settings().bucket_uris()['models']}/runs/{run_id}/triton-{task}"
    cfg = ExportConfig(
        critic=critic_uri,
        task=task,
        device=device,
        max_new_tokens=max_new_tokens or None,
        rubrics=rubrics or None,
        gen_quality=gen_quality,
    )  # type: ignore[arg-type]
    export_repository(cfg, uri, overwrite=True)
    pack = load_pack(rubrics or None)
    repository.metadata.update({"firm_uri": uri, "critic": critic_uri, "task": task, "rubrics": pack.ref})
    return uri


@component
def deploy_reward_service(
    repository_uri: str,
    backend: str,
    model: str,
    run_id: str,
    rollout: Output[Artifact],
    audit: str = "",
    audit_items: int = 40,
    margin: float = 0.1,
) -> str:
    """Serve `repository_uri` and wait until ready; returns the gRPC endpoint. Local runs start the bundled
    tritonserver on a live repository (stopped by the pipeline's exit handler; a critic already served there is
    replaced only by a candidate that is not worse, `firm.launch.rollout`); cluster runs roll out the chart's
    reward Deployment — one already serving a critic only to a candidate benched beside it on `audit` (a bench
    URI, or `synthetic`: the synthetic bench of `audit_items` items) and not worse by more than `margin`, else
    the step fails with the one-line reason (`firm.launch.reward_service`).
    `rollout.metadata["decision"]`: the rollout decision, one line."""
    from firm.launch.reward_service import deploy_reward_service as deploy

    target = "local" if backend == "local" else "kubernetes"
    if audit == "synthetic" and target == "kubernetes":
        from firm.bench.synthetic import publish_synthetic_bench

        audit = publish_synthetic_bench(audit_items)
    ep = deploy(
        repository_uri,
        target=target,
        name=f"firm-run-{run_id}",
        model=model,
        audit=audit or None,
        margin=margin,
    )  # type: ignore[arg-type]
    decision = ep.decision or f"rolled out {ep.repository}"
    rollout.metadata.update({"decision": decision, "firm_uri": ep.repository, "version": ep.version or 0})
    print(f"reward service ready: {ep.grpc} ({ep.target}, {ep.repository}); rollout: {decision}")
    return ep.grpc


@component
def stop_reward_service(backend: str, run_id: str) -> None:
    """The exit handler: stop the local reward service of this run, whether the run succeeded or not."""
    from firm.launch.reward_service import stop_reward_service as stop

    target = "local" if backend == "local" else "kubernetes"
    stopped = stop(target=target, name=f"firm-run-{run_id}")  # type: ignore[arg-type]
    print(f"reward service of run {run_id}: {'stopped' if stopped else 'nothing to stop'}")
