"""`firmctl pipeline` bad input: rejected before anything compiles or is submitted, one `error:` line each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from firm.errors import ConfigError
from pipelines.api import list_pipelines, validate_params

REPO = Path(__file__).resolve().parents[2]


def _firmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "pipeline", *args], capture_output=True, text=True, cwd=REPO,
        env=dict(os.environ), check=False, timeout=120,
    )  # fmt: skip


def test_parameters_are_typed_from_the_pipeline_signature() -> None:
    args = validate_params(
        "firm",
        [
            "dataset_items=12",
            "job_timeout_s=3.5",
            "critic_overrides=[a=1, b=2]",
            "critic_recipe=critic/tiny_cpu",
        ],
    )
    assert args == {"dataset_items": 12, "job_timeout_s": 3.5, "critic_overrides": ["a=1", "b=2"],
                    "critic_recipe": "critic/tiny_cpu"}  # fmt: skip
    infos = {i.name: i for i in list_pipelines()}
    assert set(infos) == {"firm", "critic", "rl", "bench"}
    assert infos["critic"].parameters["dataset_items"] == {"type": "int", "default": 400}
    assert set(infos["critic"].parameters) < set(infos["firm"].parameters)


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("critic", ["dataset_items=many"], "pipeline parameter 'dataset_items': 'many' is not of type int"),
        ("critic", ["critic_overrides=max_steps=3"], "'critic_overrides': 'max_steps=3' is not of type list"),
        (
            "critic",
            ["colour=red"],
            "pipeline critic has no parameter 'colour' (parameters: backend, base_model",
        ),
        (
            "rl",
            ["rl_recipe=rl/nope"],
            "pipeline parameter 'rl_recipe': no config file or shipped recipe named 'rl/nope'",
        ),
        ("critic", ["seed"], "pipeline parameter 'seed': expected key=value"),
        ("nope", [], "no pipeline named 'nope'; shipped pipelines: firm, critic, rl, bench"),
    ],
)
def test_bad_parameters_name_the_parameter(name: str, params: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_params(name, params)
    assert fragment in str(info.value)


def test_cli_rejects_bad_input_before_submitting_and_names_an_unreachable_host() -> None:
    bad = _firmctl("submit", "critic", "--host", "http://127.0.0.1:9", "--param", "train_nodes=two")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: pipeline parameter 'train_nodes': 'two' is not of type int"
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    down = _firmctl("submit", "critic", "--host", f"http://127.0.0.1:{port}", "--param", "seed=1")
    lines = down.stderr.strip().splitlines()
    assert down.returncode == 1 and len(lines) == 1, down.stderr
    assert lines[0].startswith(f"error: cannot reach Kubeflow Pipelines at http://127.0.0.1:{port}")
    unknown = _firmctl("run", "nope", "--local")
    assert (
        unknown.stderr.strip()
        == "error: no pipeline named 'nope'; shipped pipelines: firm, critic, rl, bench"
    )
    listed = json.loads(_firmctl("list", "--json").stdout)
    assert [p["name"] for p in listed] == ["firm", "critic", "rl", "bench"]


def test_submit_and_upload_through_kfp_client_against_a_local_endpoint() -> None:
    """`submit` uploads the pipeline once, reuses the version while the compiled IR is unchanged, starts runs with
    typed parameters as the pipeline-runner service account; `upload` adds every pipeline (the real kfp.Client
    against tests/pipelines/kfp_api.py: FIRM's calls, not KFP)."""
    from pipelines.api import submit, upload_all
    from tests.pipelines.kfp_api import FakeKFP, serve

    api = FakeKFP()
    with serve(api) as host:
        first = submit("bench", ["bench_items=3", "critic=triton://firm-reward-edit:8001"], host=host)
        second = submit("bench", ["bench_items=4"], host=host, experiment="firm")
        ids = upload_all(host)
    assert first == f"{host}/#/runs/details/run-1" and second.endswith("/run-2")
    run = api.runs[0]
    assert run["runtime_config"]["parameters"] == {
        "bench_items": 3,
        "critic": "triton://firm-reward-edit:8001",
    }
    assert run["service_account"] == "firm-pipeline-runner" and run["experiment_id"] == "exp-1"
    version = run["pipeline_version_reference"]
    assert api.runs[1]["pipeline_version_reference"] == version, (
        "an unchanged pipeline must reuse its version"
    )
    assert len(api.experiments) == 1
    assert {p["display_name"] for p in api.pipelines} == {"firm", "firm-critic", "firm-rl", "firm-bench"}
    assert ids["bench"] == (version["pipeline_id"], version["pipeline_version_id"])
    uploaded = dict(api.uploads)
    assert b"# Name: firm-bench" in uploaded["firm-bench"]
