"""The curate step runs teacher curation: the `curation_*` parameters are in the compiled IR and reach the step,
bad ones fail before anything runs, and the step itself (KFP local runner) curates a manifest with a scripted
chat-completions teacher, a rerun reusing the published dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from firm.curation.dataset import read_sft_dataset
from pipelines.api import IMAGE_WARNING
from tests.bench.openai_server import serve
from tests.curation.helpers import EditScript, write_edit_manifest

REPO = Path(__file__).resolve().parents[2]
CURATION = {"curation_input", "curation_teacher", "curation_teacher_model", "curation_planner",
            "curation_planner_model", "curation_rewrite_ratio", "curation_balance", "curation_concurrency"}  # fmt: skip


@pytest.mark.parametrize("name", ["firm", "critic"])
def test_compiled_pipelines_carry_the_curation_parameters(name: str) -> None:
    spec, _ = yaml.safe_load_all((REPO / "pipelines" / "compiled" / f"{name}.yaml").read_text())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) >= CURATION
    assert params["dataset_source"]["defaultValue"] == "synthetic"  # the default run is unchanged
    tasks = spec["root"]["dag"]["tasks"]
    if "curate-dataset" not in tasks:  # inside the exit handler
        tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    given = tasks["curate-dataset"]["inputs"]["parameters"]
    for p in CURATION | {"rubrics"}:
        assert given[p]["componentInputParameter"].endswith(p)
    assert set(spec["components"]["comp-curate-dataset"]["inputDefinitions"]["parameters"]) >= CURATION


def test_curation_parameters_are_checked_before_a_run() -> None:
    from firm.errors import ConfigError
    from pipelines.api import validate_params

    validate_params("critic", [])  # synthetic: no curation parameters needed
    with pytest.raises(
        ConfigError, match=r"^pipeline parameter curation_teacher: required when dataset_source"
    ):
        validate_params("critic", ["dataset_source=curate-edit", "curation_input=s3://b/pairs.jsonl"])
    with pytest.raises(ConfigError, match=r"^pipeline parameter curation_rewrite_ratio: "):
        validate_params("firm", ["dataset_source=curate-edit", "curation_input=a.jsonl", "curation_teacher=x",
                                 "curation_rewrite_ratio=1.5"])  # fmt: skip
    args = validate_params("critic", ["dataset_source=curate-gen", "curation_input=g.jsonl",
                                      "curation_teacher=http://vllm:8000", "curation_balance={instruction: uniform}"])  # fmt: skip
    assert args["curation_balance"] == {"instruction": "uniform"}


@pytest.mark.slow
# the local runner warns that the step names FIRM's pipeline image; `run_local` filters the same text
@pytest.mark.filterwarnings(f"ignore:{IMAGE_WARNING}:RuntimeWarning")
def test_the_curate_step_curates_with_an_http_teacher(firm_home: Path, tmp_path: Path) -> None:
    from kfp import local

    from firm.curation.prepare import prepare_sft_dataset
    from pipelines.components.data import curate_dataset

    manifest, scores, items = write_edit_manifest(tmp_path / "in", 6)
    curation = {"input": str(manifest), "teacher_model": "scripted", "concurrency": 4}
    with serve(None, model_name="scripted", script=EditScript(scores), latency_s=0.0) as (chat, url):
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
        task = curate_dataset(source="curate-edit", n_items=0, seed=0, curation_input=str(manifest),
                              curation_teacher=url, curation_teacher_model="scripted", curation_concurrency=4)  # fmt: skip
        uri = task.outputs["Output"]
        assert chat.requests == 6 * 3  # a report and two scores per pair
        assert "/curated/edit-" in uri
        ds = read_sft_dataset(uri)
        assert {(r.id, r.axis): r.score for r in ds.rows} == {
            (it.id, axis): (it.execution if axis == "execution" else it.consistency)
            for it in items
            for axis in ("execution", "consistency")
        }
        assert task.outputs["dataset"].metadata["teacher_calls"] == 18
        assert "teacher calls 18" in Path(task.outputs["summary"].path).read_text()
        # the same parameters and manifest: the published dataset is reused, no teacher is asked
        chat.reset()
        uri2, stats = prepare_sft_dataset("curate-edit", curation={**curation, "teacher": url})
        assert uri2 == uri and stats["curation"]["reused"] is True and chat.requests == 0
