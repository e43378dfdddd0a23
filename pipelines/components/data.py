"""`curate_dataset`: the run's critic SFT dataset (`firm.curation.prepare.prepare_sft_dataset`)."""

from kfp.dsl import Dataset, Markdown, Output

from pipelines.components import component


@component
def curate_dataset(
    source: str,
    n_items: int,
    seed: int,
    dataset: Output[Dataset],
    summary: Output[Markdown],
    curation_input: str = "",
    curation_teacher: str = "",
    curation_teacher_model: str = "",
    curation_planner: str = "",
    curation_planner_model: str = "",
    curation_rewrite_ratio: float = 0.0,
    curation_balance: dict = {},  # noqa: B006 - KFP parameters are declared with literal defaults
    curation_concurrency: int = 8,
    rubrics: str = "",
) -> str:
    """`source`: `synthetic` (a learnable known-answer dataset), `curate-edit` / `curate-gen` (teacher curation of
    the manifest `curation_input`: difference-first editing or plan-then-score generation; the teacher is an
    OpenAI-compatible endpoint URL or a local critic path/URI) or a published SFT dataset URI. Returns its URI."""
    import json

    from firm.curation.prepare import prepare_sft_dataset
    from firm.logs import quiet_libraries

    quiet_libraries()  # e.g. httpx's line per teacher request

    curation = {
        "input": curation_input, "teacher": curation_teacher, "teacher_model": curation_teacher_model,
        "planner": curation_planner, "planner_model": curation_planner_model,
        "rewrite_ratio": curation_rewrite_ratio, "balance": curation_balance, "concurrency": curation_concurrency,
    }  # fmt: skip
    uri, stats = prepare_sft_dataset(
        source, n_items=n_items, seed=seed, curation=curation, rubrics=rubrics or None
    )
    meta = {"firm_uri": uri, **{f"rows_{k}": v for k, v in stats["splits"].items()}}
    cur = stats.get("curation")
    if cur:
        meta |= {"teacher_calls": cur["teacher_calls"], "teacher_cache_hits": cur["teacher_cache_hits"],
                 "items_read": cur["items"]["read"]}  # fmt: skip
    dataset.metadata.update(meta)
    with open(dataset.path, "w") as f:
        json.dump({"uri": uri, **stats}, f, indent=2)
    rows = "\n".join(f"| {k} | {v} |" for k, v in stats["by_task_axis_score"].items())
    curated = ""
    if cur:
        curated = (f"curated from `{curation_input}` ({'reused' if cur['reused'] else 'new'}): items "
                   f"{cur['items']}, teacher calls {cur['teacher_calls']} ({cur['teacher_cache_hits']} from the "
                   f"cache), {cur['teacher_tokens']} tokens\n\n")  # fmt: skip
    with open(summary.path, "w") as f:
        f.write(f"### Critic SFT dataset\n\n`{uri}`\n\n{curated}splits: {stats['splits']}\n\n"
                f"| task/axis/score | rows |\n|---|---|\n{rows}\n")  # fmt: skip
    return uri
