"""FIRM's four pipelines — one DAG each, the same function on a cluster and with the KFP local runner.

- `firm`:   curate → train_critic → bench_critic → export_to_triton → deploy_reward_service → rl_train → eval_policy
- `critic`: curate → train_critic → bench_critic → export_to_triton
- `rl`:     rl_train (rewards from a served critic) → eval_policy
- `bench`:  bench_critic (a critic URI, `triton://host:port` or an OpenAI-compatible endpoint)

The curate step makes the critic's SFT data: `dataset_source=synthetic` (the default: a learnable known-answer
set), `curate-edit` / `curate-gen` (teacher curation of the JSONL manifest `curation_input`, difference-first
editing or plan-then-score generation; `curation_teacher` is an OpenAI-compatible endpoint URL or a local critic
path/URI, `curation_planner` the gen planner, default the teacher), or a published SFT dataset URI.

`backend` is the one switch between a cluster and this machine: `pytorchjob` (distributed steps as PyTorchJobs on
the GPU pool — Kubeflow Training Operator v1), `trainjob` (the same steps as Kubeflow Trainer v2 TrainJobs), `auto`
(whichever of the two the cluster has, Trainer v2 first) — each with the reward service rolled out in the cluster —
or `local` (torchrun on the runner's machine, the bundled tritonserver for the run, stopped by the exit handler
whether the run succeeds or fails). Its default is the cluster settings' `job_backend` (the chart's
`training.backend`, compiled in at install); `firmctl pipeline run --local` sets `local`.
"""

from kfp import dsl

from firm.config import get_settings
from pipelines.components.bench import bench_critic
from pipelines.components.data import curate_dataset
from pipelines.components.evaluate import eval_policy
from pipelines.components.launch import rl_train, train_critic
from pipelines.components.serve import deploy_reward_service, export_to_triton, stop_reward_service
from pipelines.placement import CPU, CURATE, DEPLOY, EXIT, GPU, LAUNCHER, place

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER
_GPU_POOL = get_settings().cluster.pipeline_gpu_pool
_BACKEND = get_settings().cluster.job_backend


def _curation(args: dict) -> dict:
    """The `curation_*` parameters of a pipeline function's arguments."""
    return {k: v for k, v in args.items() if k.startswith("curation_")}


def _critic_steps(
    dataset_source: str, dataset_items: int, seed: int, critic_recipe: str, critic_overrides: list,
    base_model: str, train_pool: str, train_nodes: int, train_nproc_per_node: int, trainer_image: str,
    backend: str, job_timeout_s: float, bench: str, bench_items: int, bench_max_new_tokens: int,
    bench_batch_size: int, export_task: str, export_device: str, export_max_new_tokens: int, rubrics: str,
    curation: dict, export_gen_quality: bool = True,
) -> dsl.PipelineTask:  # fmt: skip
    """curate → train → bench → export; returns the export task (its output is the repository URI).
    `curation`: the `curation_*` pipeline parameters, passed to the curate step by name."""
    curate = place(
        curate_dataset(source=dataset_source, n_items=dataset_items, seed=seed, rubrics=rubrics, **curation),
        CURATE,
    )
    curate.set_display_name("curate")
    train = place(
        train_critic(
            recipe=critic_recipe, overrides=critic_overrides, dataset_uri=curate.outputs["Output"],
            base_model=base_model, run_id=RUN_ID, pool=train_pool, nodes=train_nodes,
            nproc_per_node=train_nproc_per_node, image=trainer_image, backend=backend, timeout_s=job_timeout_s,
            rubrics=rubrics,
        ),
        LAUNCHER,
    )  # fmt: skip
    train.set_display_name("train critic")
    scored = place(
        bench_critic(
            critic=train.outputs["Output"], bench=bench, n_items=bench_items, max_new_tokens=bench_max_new_tokens,
            batch_size=bench_batch_size, rubrics=rubrics, run_id=RUN_ID,
        ),
        GPU,
    )  # fmt: skip
    scored.set_display_name("bench critic")
    export = place(
        export_to_triton(
            critic_uri=train.outputs["Output"], task=export_task, device=export_device,
            max_new_tokens=export_max_new_tokens, rubrics=rubrics, run_id=RUN_ID, gen_quality=export_gen_quality,
        ),
        CPU,
    )  # fmt: skip
    export.set_display_name("export to Triton")
    export.after(scored)  # serve only a critic whose benchmark ran
    return export


@dsl.pipeline(name="firm-critic", description="Curate → train a critic → FIRM-Bench → export to Triton.")
def critic_pipeline(
    dataset_source: str = "synthetic",
    dataset_items: int = 400,
    seed: int = 0,
    curation_input: str = "",
    curation_teacher: str = "",
    curation_teacher_model: str = "",
    curation_planner: str = "",
    curation_planner_model: str = "",
    curation_rewrite_ratio: float = 0.0,
    curation_balance: dict = {},  # noqa: B006
    curation_concurrency: int = 8,
    critic_recipe: str = "critic/qwen3vl_8b_edit_full",
    critic_overrides: list = [],  # noqa: B006 - KFP pipeline parameters are declared with literal defaults
    base_model: str = "",
    train_pool: str = _GPU_POOL,
    train_nodes: int = 1,
    train_nproc_per_node: int = 0,
    trainer_image: str = "",
    backend: str = _BACKEND,
    job_timeout_s: float = 0.0,
    bench: str = "synthetic",
    bench_items: int = 40,
    bench_max_new_tokens: int = 0,
    bench_batch_size: int = 8,
    export_task: str = "edit",
    export_device: str = "gpu",
    export_max_new_tokens: int = 0,
    export_gen_quality: bool = True,
    rubrics: str = "",
) -> None:
    _critic_steps(
        dataset_source, dataset_items, seed, critic_recipe, critic_overrides, base_model, train_pool, train_nodes,
        train_nproc_per_node, trainer_image, backend, job_timeout_s, bench, bench_items, bench_max_new_tokens,
        bench_batch_size, export_task, export_device, export_max_new_tokens, rubrics, _curation(locals()),
        export_gen_quality,
    )  # fmt: skip


def _rl_steps(
    rl_recipe: str, rl_overrides: list, reward_url: str, rl_pool: str, rl_nodes: int, rl_nproc_per_node: int,
    trainer_image: str, backend: str, job_timeout_s: float, eval_prompts: int,
) -> None:  # fmt: skip
    train = place(
        rl_train(
            recipe=rl_recipe, overrides=rl_overrides, reward_url=reward_url, run_id=RUN_ID, pool=rl_pool,
            nodes=rl_nodes, nproc_per_node=rl_nproc_per_node, image=trainer_image, backend=backend,
            timeout_s=job_timeout_s,
        ),
        LAUNCHER,
    )  # fmt: skip
    train.set_display_name("RL")
    evaluate = place(
        eval_policy(
            recipe=rl_recipe, overrides=rl_overrides, lora_uri=train.outputs["Output"], reward_url=reward_url,
            n_prompts=eval_prompts,
        ),
        GPU,
    )  # fmt: skip
    evaluate.set_display_name("evaluate policy")


@dsl.pipeline(name="firm-rl", description="RL with rewards from a served critic → before/after evaluation.")
def rl_pipeline(
    rl_recipe: str = "rl/qwen_edit_2509_nft_cme",
    rl_overrides: list = [],  # noqa: B006
    reward_url: str = "",
    rl_pool: str = _GPU_POOL,
    rl_nodes: int = 2,
    rl_nproc_per_node: int = 0,
    trainer_image: str = "",
    backend: str = _BACKEND,
    job_timeout_s: float = 0.0,
    eval_prompts: int = 8,
) -> None:
    _rl_steps(
        rl_recipe, rl_overrides, reward_url, rl_pool, rl_nodes, rl_nproc_per_node, trainer_image, backend,
        job_timeout_s, eval_prompts,
    )  # fmt: skip


@dsl.pipeline(name="firm-bench", description="FIRM-Bench of any critic: a model URI or a served endpoint.")
def bench_pipeline(
    critic: str = "s3://firm-models/critics/firm-edit-8b",
    bench: str = "synthetic",
    bench_items: int = 40,
    max_new_tokens: int = 0,
    batch_size: int = 8,
    rubrics: str = "",
) -> None:
    task = place(
        bench_critic(
            critic=critic, bench=bench, n_items=bench_items, max_new_tokens=max_new_tokens, batch_size=batch_size,
            rubrics=rubrics, run_id=RUN_ID,
        ),
        GPU,
    )  # fmt: skip
    task.set_display_name("bench critic")


@dsl.pipeline(
    name="firm",
    description="The FIRM loop: curate → critic → bench → Triton → reward service → RL → evaluation.",
)
def firm_pipeline(
    dataset_source: str = "synthetic",
    dataset_items: int = 400,
    seed: int = 0,
    curation_input: str = "",
    curation_teacher: str = "",
    curation_teacher_model: str = "",
    curation_planner: str = "",
    curation_planner_model: str = "",
    curation_rewrite_ratio: float = 0.0,
    curation_balance: dict = {},  # noqa: B006
    curation_concurrency: int = 8,
    critic_recipe: str = "critic/qwen3vl_8b_edit_full",
    critic_overrides: list = [],  # noqa: B006
    base_model: str = "",
    train_pool: str = _GPU_POOL,
    train_nodes: int = 1,
    train_nproc_per_node: int = 0,
    trainer_image: str = "",
    backend: str = _BACKEND,
    job_timeout_s: float = 0.0,
    bench: str = "synthetic",
    bench_items: int = 40,
    bench_max_new_tokens: int = 0,
    bench_batch_size: int = 8,
    export_task: str = "edit",
    export_device: str = "gpu",
    export_max_new_tokens: int = 0,
    export_gen_quality: bool = True,
    rubrics: str = "",
    rl_recipe: str = "rl/qwen_edit_2509_nft_cme",
    rl_overrides: list = [],  # noqa: B006
    rl_pool: str = _GPU_POOL,
    rl_nodes: int = 2,
    rl_nproc_per_node: int = 0,
    eval_prompts: int = 8,
    rollout_margin: float = 0.1,
) -> None:
    stop = place(stop_reward_service(backend=backend, run_id=RUN_ID), EXIT)
    stop.set_display_name("stop reward service")
    with dsl.ExitHandler(stop, name="run"):
        export = _critic_steps(
            dataset_source, dataset_items, seed, critic_recipe, critic_overrides, base_model, train_pool,
            train_nodes, train_nproc_per_node, trainer_image, backend, job_timeout_s, bench, bench_items,
            bench_max_new_tokens, bench_batch_size, export_task, export_device, export_max_new_tokens, rubrics,
            _curation(locals()), export_gen_quality,
        )  # fmt: skip
        deploy = place(
            deploy_reward_service(
                repository_uri=export.outputs["Output"],
                backend=backend,
                model=export_task,
                run_id=RUN_ID,
                audit=bench,
                audit_items=bench_items,
                margin=rollout_margin,
            ),
            DEPLOY,
        )
        deploy.set_display_name("deploy reward service")
        _rl_steps(
            rl_recipe, rl_overrides, deploy.outputs["Output"], rl_pool, rl_nodes, rl_nproc_per_node, trainer_image, backend,
            job_timeout_s, eval_prompts,
        )  # fmt: skip
