"""FIRM's pipelines on a stock Kubeflow (issue 26), KFP side: the KFP version check, multi-user namespaces and the
bearer token, uploads compiled from the settings and versioned by a label, and the image pull Secrets and Istio
opt-out in every compiled step (real kfp.Client against tests/pipelines/kfp_api.py; real KFP compiler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firm.launch.kfp_run import MIN_KFP_VERSION
from tests.pipelines.kfp_api import FakeKFP, serve
from tests.pipelines.test_compile import _compile, _docs


@pytest.fixture(autouse=True)
def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from firm.config import get_settings

    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    for var in (
        "FIRM_STORE_URI",
        "FIRM_CONFIG",
        "FIRM_NAMESPACE",
        "KFP_TOKEN",
        "FIRM_CLUSTER__IMAGE_PULL_SECRETS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token"))
    get_settings(fresh=True)
    yield
    get_settings(fresh=True)


def test_an_old_kfp_is_refused_with_one_line_before_anything_is_uploaded() -> None:
    from pipelines.api import PipelineError, upload_all

    api = FakeKFP()
    api.healthz = {"multi_user": False, "frontendTagName": "2.4.0"}
    with serve(api) as host, pytest.raises(PipelineError) as info:
        upload_all(host)
    msg = str(info.value)
    assert "2.4.0" in msg and MIN_KFP_VERSION in msg and "\n" not in msg
    assert not api.uploads and not api.pipelines
    with serve(api) as host, pytest.raises(PipelineError, match="older than"):
        upload_all(host, kfp_version="2.2.1")  # stated by the user when the endpoint does not say


def test_multi_user_kfp_gets_the_profile_namespace_and_a_bearer_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines.api import submit

    monkeypatch.setenv("KFP_TOKEN", "tok-123")
    api = FakeKFP()
    api.healthz = {"multi_user": True, "frontendTagName": MIN_KFP_VERSION}
    with serve(api) as host:
        submit("bench", ["bench_items=3"], host=host, namespace="team-a")
    assert api.experiments[0]["namespace"] == "team-a"
    assert api.authorization and all(a == "Bearer tok-123" for a in api.authorization[1:])


def test_upload_compiles_from_the_settings_and_versions_by_label(tmp_path: Path) -> None:
    """What the chart's upload Job runs: `firmctl pipeline upload` in a fresh process whose settings (the chart's
    values, through the settings ConfigMap) name another image; the IR uploaded carries it, in versions named by the
    chart's label."""
    import os
    import subprocess
    import sys

    api = FakeKFP()
    api.healthz = {"multi_user": False, "frontendTagName": "2.15.1"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRM_")}
    env |= {
        "FIRM_HOME": str(tmp_path / "home"),
        "FIRM_CLUSTER__PIPELINE_IMAGE": "registry.example/firm-pipeline:9.9.9",
    }
    with serve(api) as host:
        out = subprocess.run(
            [sys.executable, "-m", "firm.cli.main", "pipeline", "upload", "--host", host, "--version-label",
             "0.1.0-abc123"], capture_output=True, text=True, env=env, check=False, timeout=300,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    uploaded = dict(api.uploads)
    assert b"registry.example/firm-pipeline:9.9.9" in uploaded["firm-bench"], (
        "the values' image, not the IR's"
    )
    labelled = [v["display_name"] for v in api.versions if v["display_name"].startswith("0.1.0-abc123-")]
    assert len(labelled) == 4


def test_every_compiled_step_opts_out_of_istio_and_pulls_with_the_settings_secrets(tmp_path: Path) -> None:
    _compile(tmp_path, {"FIRM_CLUSTER__IMAGE_PULL_SECRETS": json.dumps(["regcred"])})
    for name in ("firm", "critic", "rl", "bench"):
        _, executors = _docs(tmp_path / f"{name}.yaml")
        for exe, k8s in executors.items():
            assert k8s["podMetadata"]["labels"]["sidecar.istio.io/inject"] == "false", exe
            assert k8s["podMetadata"]["annotations"]["sidecar.istio.io/inject"] == "false", exe
            assert [s["secretName"] for s in k8s["imagePullSecret"]] == ["regcred"], exe
