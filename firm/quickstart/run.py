"""`firmctl quickstart`: the `firm` Kubeflow pipeline on this machine, through the KFP local runner, on tiny models.

The same DAG a cluster runs (`pipelines.dags.firm_pipeline`, `backend=local`): curate (teacher curation of
synthetic source data, `firm.quickstart.teacher` as the teacher endpoint) → train critic (SFT, 2 processes through
the local launch backend) → bench (FIRM-Bench on held-out items) → export to Triton (a model repository in the local
object store) → deploy (the bundled tritonserver) → RL (DiffusionNFT, rewards over gRPC) → evaluate the policy
before/after on held-out prompts; the exit handler stops the tritonserver. Only the inputs are made here: the tiny
base critic (random-init from configs), the base policy (a scene policy warmed up on synthetic data,
`firm.quickstart.policy`: Qwen-Image-Edit for editing, Qwen-Image for generation), the source data, the bench and
the prompt files.

`--task both` runs the pipeline once per task (an editing critic and policy, then a generation critic and policy).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from firm.quickstart.models import (
    SIZES,
    STAGES,
    PipelineRun,
    QuickstartSize,
    SizeName,
    Task,
    TaskChoice,
)
from pipelines.local_view import StageResult

RL_RECIPES: dict[str, str] = {"edit": "rl/tiny_qwen_edit_nft", "gen": "rl/tiny_qwen_image_nft"}
# On top of the recipe: the warmed-up Qwen-Image policy was trained without an unconditional branch (no true CFG),
# and the recipe's learning rate is for its brightness smoke run.
RL_TASK_OVERRIDES: dict[str, str] = {
    "edit": "",
    "gen": ", policy.options.true_cfg_scale=1.0, optim.lr=3.0e-3",
}
CRITIC_RECIPE = "critic/tiny_cpu"


def _stages(ran: list[StageResult]) -> list[StageResult]:
    """The DAG's stages in order, with what the local run recorded of each ("not run" for the others)."""
    by_task = {r.task: r for r in ran}
    return [by_task.get(task) or StageResult(task=task, name=name) for task, name in STAGES]


def pipeline_parameters(
    task: Task, size: QuickstartSize, *, critic: Path, policy: Path, manifest: Path, teacher: str, bench: str,
    prompts: Path, eval_prompts: Path, critic_runs: Path | None = None,
) -> list[str]:  # fmt: skip
    """The `firm` pipeline's parameters for one quickstart task (`key=value`, as `firmctl pipeline run` takes).
    `critic_runs`: the critic SFT run's local folder parent (under the workdir, one per run), never `./runs`."""
    critic_overrides = (
        f"[max_steps={size.sft_steps}, batch.per_device=4, eval.every_n_steps=0, "
        f"checkpoint.every_n_steps={max(1, size.sft_steps // 2)}"
        f"{f', output_dir={critic_runs}' if critic_runs is not None else ''}]"
    )
    rl_overrides = (
        f"[policy.uri={policy}, policy.resolution={size.rl_resolution}, data.prompts={prompts}, "
        f"data.eval_prompt_file={eval_prompts}, steps={size.rl_steps}, "
        f"checkpoint.every_steps={size.rl_steps}, monitor.eval_every=0, monitor.tensorboard=false, "
        # the critic audit (firm.rl.audit): a slice of the held-out bench through the served critic, after the run
        f"audit.bench={bench}, audit.every_steps={size.rl_steps}, audit.max_items=16"
        f"{RL_TASK_OVERRIDES[task]}]"
    )
    return [
        f"dataset_source=curate-{task}", f"curation_input={manifest}", f"curation_teacher={teacher}",
        "curation_teacher_model=firm-quickstart-teacher", "curation_concurrency=8",
        f"critic_recipe={CRITIC_RECIPE}", f"base_model={critic}", f"critic_overrides={critic_overrides}",
        "train_pool=cpu", "train_nodes=1", "train_nproc_per_node=2",
        f"bench={bench}", f"bench_items={size.bench_items}", "bench_max_new_tokens=48", "bench_batch_size=20",
        f"export_task={task}", "export_device=cpu", "export_max_new_tokens=48",
        # plan-then-score curates the instruction axis only (the paper's FIRM-Gen data): no quality labels to
        # learn, so the generation reward is served from the instruction judgement alone
        f"export_gen_quality={'true' if task == 'edit' else 'false'}",
        f"rl_recipe={RL_RECIPES[task]}", f"rl_overrides={rl_overrides}", "rl_pool=cpu", "rl_nodes=1",
        "rl_nproc_per_node=1", f"eval_prompts={size.rl_eval_prompts}",
    ]  # fmt: skip


def prepare_inputs(
    work: Path, task: Task, size: QuickstartSize, console: Console, verbose: bool = False
) -> dict[str, Path | str]:
    """The tiny base critic and policy, source data, held-out bench and prompt files of one task (reused when
    already there: they are deterministic). One line on `console` for the base policy and one for the inputs."""
    from firm.config import get_settings
    from firm.models.tiny import build_tiny_critic
    from firm.quickstart import data
    from firm.quickstart.policy import build_policy
    from firm.storage import is_published
    from pipelines.local_view import stage_line

    inputs = work / "inputs"
    critic = inputs / "tiny-critic"
    if not (critic / "config.json").is_file():
        build_tiny_critic(critic, size="tiny", seed=0)
    policy = inputs / f"tiny-policy-{task}-{size.name}"
    if not (policy / "model_index.json").is_file():
        w = build_policy(
            task, policy, steps=size.policy_warmup_steps, items=size.policy_warmup_items,
            resolution=size.rl_resolution, image_size=size.image_size, progress_interval=None if verbose else 0,
        )  # fmt: skip
        console.print(
            stage_line(StageResult(
                task="warm-up", name="base policy", status="success", seconds=w.seconds,
                headline=f"{w.steps} warm-up steps on synthetic {'edits' if task == 'edit' else 'images'}, loss "
                f"{w.first_loss:.3f} → {w.last_loss:.3f}",
            )), highlight=False, soft_wrap=True,
        )  # fmt: skip
    src = inputs / f"curation-{task}-{size.name}"
    manifest = src / "manifest.jsonl"
    if not manifest.is_file():
        writer = data.write_edit_manifest if task == "edit" else data.write_gen_manifest
        writer(src, size.curation_items, size.image_size)
    bench_uri = f"{get_settings().bucket_uris()['datasets']}/quickstart/bench-{task}-{size.name}"
    if not is_published(bench_uri):
        data.publish_bench(
            inputs / f"bench-{task}-{size.name}", bench_uri, task, size.bench_items, size.image_size
        )
    prompts = data.write_rl_prompts(
        inputs / f"rl-{task}-train", task, size.rl_prompts, size.image_size, data.RL_SEED
    )
    held_out = data.write_rl_prompts(
        inputs / f"rl-{task}-eval", task, size.rl_eval_prompts, size.image_size, data.RL_EVAL_SEED
    )
    console.print(
        f"inputs ({task}): {inputs} — tiny critic, base policy, {size.curation_items} source items, "
        f"{size.bench_items} bench items, {size.rl_prompts} + {size.rl_eval_prompts} (held-out) RL prompts",
        highlight=False,
        soft_wrap=True,
    )
    return {"critic": critic, "policy": policy, "manifest": manifest, "bench": bench_uri, "prompts": prompts,
            "eval_prompts": held_out}  # fmt: skip


def run_task(
    work: Path, task: Task, size: QuickstartSize, console: Console, verbose: bool = False
) -> PipelineRun:
    """Prepare the inputs of one task and run the `firm` pipeline on them with the KFP local runner (one line per
    stage on `console`, each stage's whole output in its log; `verbose`: everything on the console too)."""
    from firm.quickstart.teacher import serve_teacher
    from pipelines.api import LocalRunFailed, run_local

    inputs = prepare_inputs(work, task, size, console, verbose)
    with serve_teacher() as (teacher_url, _calls):
        params = pipeline_parameters(
            task, size, critic=Path(inputs["critic"]), policy=Path(inputs["policy"]),
            manifest=Path(inputs["manifest"]), teacher=teacher_url, bench=str(inputs["bench"]),
            prompts=Path(inputs["prompts"]), eval_prompts=Path(inputs["eval_prompts"]),
            critic_runs=unique_dir(work / "critic-runs", task),
        )  # fmt: skip
        try:
            run = run_local(
                "firm", params, pipeline_root=work / "pipeline-runs", console=console, verbose=verbose
            )
        except LocalRunFailed as exc:
            failed = PipelineRun(
                task=task, run_dir=exc.run.run_dir, seconds=exc.run.seconds,
                parameters=dict(p.split("=", 1) for p in params), stages=_stages(exc.run.stages),
                base_policy=_base_policy(Path(inputs["policy"])),
            )  # fmt: skip
            raise QuickstartFailed(str(exc), failed) from None
    return PipelineRun(
        task=task, run_dir=run.run_dir, seconds=run.seconds, parameters=run.arguments, stages=_stages(run.stages),
        base_policy=_base_policy(Path(inputs["policy"])),
    )  # fmt: skip


def unique_dir(parent: Path, stem: str) -> Path:
    """A folder name under `parent` no other run uses: `<stem>-<UTC time>-<random>` (not created here)."""
    import uuid

    return parent / f"{stem}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


MARKER = ".firm-quickstart"


def check_workdir(work: Path, *, overwrite: bool = False) -> None:
    """The shared refusal (`firm.storage.targets`) of a non-empty `--workdir` that is not a quickstart's own (where
    a rerun reuses the deterministic inputs and adds a new pipeline run); `overwrite` empties it first."""
    from firm.storage.targets import check_target, clear_target

    own = (work / MARKER).is_file() or ((work / "inputs").is_dir() and (work / "pipeline-runs").is_dir())
    if (overwrite or not own) and check_target(work, "--workdir", overwrite=overwrite):
        clear_target(work)


def _base_policy(path: Path) -> dict:
    from firm.quickstart.policy import read_warmup

    warmup = read_warmup(path)
    return {"path": str(path), "warmup": warmup.model_dump() if warmup else None}


class QuickstartFailed(Exception):
    """A pipeline run failed; `run` holds what ran (for the report)."""

    def __init__(self, message: str, run: PipelineRun) -> None:
        super().__init__(message)
        self.run = run


def run_quickstart(
    workdir: str | Path,
    *,
    task: TaskChoice = "edit",
    size: SizeName = "tiny",
    console: Console | None = None,
    verbose: bool = False,
    overwrite: bool = False,
) -> Path:
    """Run the quickstart under `workdir`; returns the report directory (`index.html`, `summary.json`).
    Everything it makes goes under `workdir` (and `$FIRM_HOME`'s object store); a non-empty `workdir` that is not
    a quickstart's is refused unless `overwrite`.

    `console` (default: stderr) gets one line per stage and the key numbers; each stage's whole output goes to its
    log under the pipeline run's folder (`verbose=True`: to the console as well)."""
    import sys

    from firm.quickstart.report import write_report

    con = console or Console(file=sys.stderr)  # bound now: local runs redirect sys.stderr to their stage logs
    work = Path(workdir).resolve()
    check_workdir(work, overwrite=overwrite)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("a firmctl quickstart workdir\n")
    preset = SIZES[size]
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    runs: list[PipelineRun] = []
    error: str | None = None
    for t in ("edit", "gen") if task == "both" else (task,):
        try:
            runs.append(run_task(work, t, preset, con, verbose))  # type: ignore[arg-type]
        except QuickstartFailed as exc:
            runs.append(exc.run)
            error = str(exc)
            break
    report = write_report(
        work, runs, size=preset, started=started, seconds=time.perf_counter() - t0, error=error, console=con
    )
    con.print(f"report: {report / 'index.html'}", highlight=False, soft_wrap=True)
    if error:
        from firm.errors import FirmError

        raise FirmError(f"quickstart: {error} (partial report: {report / 'index.html'})")
    return report
