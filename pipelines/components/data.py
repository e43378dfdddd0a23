"""`curate_dataset`: the run's critic SFT dataset (`firm.curation.prepare.prepare_sft_dataset`)."""

from kfp.dsl import Dataset, Markdown, Output

from pipelines.components import component


@component
def curate_dataset(
    source: str, n_items: int, seed: int, dataset: Output[Dataset], summary: Output[Markdown]
) -> str:
    """`source`: `synthetic` (a learnable known-answer dataset) or a published SFT dataset URI. Returns its URI."""
    import json

    from firm.curation.prepare import prepare_sft_dataset

    uri, stats = prepare_sft_dataset(source, n_items=n_items, seed=seed)
    dataset.metadata.update({"firm_uri": uri, **{f"rows_{k}": v for k, v in stats["splits"].items()}})
    with open(dataset.path, "w") as f:
        json.dump({"uri": uri, **stats}, f, indent=2)
    rows = "\n".join(f"| {k} | {v} |" for k, v in stats["by_task_axis_score"].items())
    with open(summary.path, "w") as f:
        f.write(f"### Critic SFT dataset\n\n`{uri}`\n\nsplits: {stats['splits']}\n\n| task/axis/score | rows |\n"
                f"|---|---|\n{rows}\n")  # fmt: skip
    return uri
