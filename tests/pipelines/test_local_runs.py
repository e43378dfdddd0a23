"""Pipelines on this machine with the real KFP local runner: a failing training step, a cancelled launcher, and the
deploy / exit-handler pair, which must never leave a tritonserver behind. The `firm` DAG end to end (curate →
2-process SFT through the local job backend → bench → export → deploy → RL → evaluation) is the quickstart's test,
`tests/test_quickstart.py`; the `critic` and `rl` DAGs are built from the same step functions (`pipelines.dags`)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kfp import dsl

from pipelines.api import IMAGE_WARNING
from pipelines.components.serve import deploy_reward_service, stop_reward_service
from tests.pipelines.procs import tritonservers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from firm.config import get_settings

    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    for var in ("FIRM_STORE_URI", "FIRM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings(fresh=True)
    yield
    get_settings(fresh=True)


def _tiny_params(critic: Path, *extra: str) -> list[str]:
    return [
        "dataset_items=200", "critic_recipe=critic/tiny_cpu", f"base_model={critic}",
        "critic_overrides=[max_steps=40, batch.per_device=4, eval.every_n_steps=0, checkpoint.every_n_steps=20]",
        "train_pool=cpu", "train_nproc_per_node=2", "bench_items=20", "bench_max_new_tokens=48",
        "bench_batch_size=20", "export_device=cpu", "export_max_new_tokens=48", *extra,
    ]  # fmt: skip


def _firmctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "pipeline", *args], capture_output=True, text=True, cwd=cwd,
        env=dict(os.environ), check=False, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_a_failing_training_job_fails_the_run_with_the_jobs_error(tmp_path: Path) -> None:
    out = _firmctl(
        "run", "critic", "--local", *[f"--param={p}" for p in _tiny_params(tmp_path / "no-such-critic")],
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    # one line per step, the failing step's last lines and its log, then ONE error line naming the step and the
    # job's own error; nothing else (the runner's output is in the logs)
    assert err[0].startswith("✓ curate ") and err[1].startswith("✗ train critic ") and "failure" in err[1]
    assert err[2] == "--- last 20 lines of train critic ---"
    assert err[-1].startswith(
        "error: pipeline critic: step 'train critic' (train-critic) failed: job firm-sft-"
    )
    assert "exited with code 1: error: critic model" in err[-1] and "no-such-critic" in err[-1]
    assert err[-2].startswith("log: ") and len(err) == 3 + 20 + 2, out.stderr
    log = Path(err[-2].removeprefix("log: "))
    assert log.name == "train-critic.log" and log.parent.name == "logs"
    text = [ln for ln in log.read_text().splitlines() if ln.strip(" -")]
    assert err[3:-2] == text[-20:]
    assert "failed: master-0 exited with code 1: error:" in log.read_text()
    assert "Executing task 'bench-critic'" not in (log.parent / "run.log").read_text(), (
        "no step after the failed one"
    )
    assert not list(log.parent.glob("bench-critic.log"))


@pytest.mark.slow
def test_stopping_the_launcher_step_cancels_its_job(tiny_critic_dir: Path, tmp_path: Path) -> None:
    """SIGTERM to a launcher step (what terminating a KFP run does to its pod) cancels the job it launched."""
    from firm.curation.prepare import prepare_sft_dataset
    from firm.launch.local_backend import LocalBackend

    dataset, _ = prepare_sft_dataset("synthetic", n_items=200)
    code = (
        "from pipelines.components.launch import train_critic\n"
        "class M:\n    metadata = {}\n    path = 'unused'\n"
        "class X:\n    def log_metric(self, k, v): pass\n"
        f"train_critic.python_func(recipe='critic/tiny_cpu', overrides=['max_steps=100000'], dataset_uri={dataset!r},"
        f" base_model={str(tiny_critic_dir)!r}, run_id='cancelme', pool='cpu', nodes=1, nproc_per_node=2, image='',"
        " backend='local', timeout_s=0.0, rubrics='', model=M(), metrics=X())\n"
    )
    step = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ), text=True)  # fmt: skip
    backend = LocalBackend()
    deadline = time.monotonic() + 120
    while True:
        assert step.poll() is None, f"the step exited before its job started: {step.stdout.read()[-2000:]}"
        assert time.monotonic() < deadline, "the job never started"
        try:
            if backend.status("firm-sft-cancelme").phase == "Running" and any(
                "critic sft" in ln or "from step" in ln for ln in backend.logs("firm-sft-cancelme")
            ):
                break
        except Exception:
            pass
        time.sleep(0.5)
    step.send_signal(signal.SIGTERM)
    output, _ = step.communicate(timeout=120)
    assert step.returncode != 0
    assert "cancelling job firm-sft-cancelme" in output and "cancelled: the step was stopped" in output
    assert backend.status("firm-sft-cancelme").phase == "Cancelled"


# ----------------------------------------------------------------------------- deploy / exit handler


# the local runner runs it with this Python environment; the image is named only so that the KFP SDK does not warn
# that its default image will change
@dsl.component(install_kfp_package=False, base_image="python:3.11")
def probe_endpoint(endpoint: str, fail: bool, repo: str) -> str:
    """Check that the reward service answers (its models are ready) and that the test's process filter sees its
    one tritonserver (so "none left behind" below is not vacuously true), then optionally fail the run."""
    import os
    import sys
    from pathlib import Path

    import tritonclient.grpc as grpcclient

    sys.path.insert(0, repo)
    from tests.pipelines.procs import tritonservers

    client = grpcclient.InferenceServerClient(endpoint)
    if not client.is_server_ready() or not client.is_model_ready("firm_edit_reward"):
        raise RuntimeError(f"reward service at {endpoint} is not ready")
    servers = tritonservers(Path(os.environ["FIRM_HOME"]))
    if len(servers) != 1:
        raise RuntimeError(f"the process filter sees {len(servers)} tritonservers of this FIRM_HOME, not 1")
    if fail:
        raise RuntimeError("this step fails on purpose after the service came up")
    return endpoint


@dsl.pipeline(name="deploy-probe")
def deploy_probe(repository: str, fail: bool, repo: str) -> None:
    stop = stop_reward_service(backend="local", run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    with dsl.ExitHandler(stop):
        deploy = deploy_reward_service(
            repository_uri=repository, backend="local", model="edit", run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
        )
        probe_endpoint(endpoint=deploy.outputs["Output"], fail=fail, repo=repo)


# the local runner warns that the deploy step names FIRM's pipeline image; `run_local` filters the same text
@pytest.mark.filterwarnings(f"ignore:{IMAGE_WARNING}:RuntimeWarning")
@pytest.mark.slow
def test_deploy_and_exit_handler_leave_no_tritonserver_behind(
    formatted_critic_dir: Path, tmp_path: Path
) -> None:
    from kfp import local

    from firm.config import get_settings
    from firm.serving.export import ExportConfig, export_repository

    repo = export_repository(
        ExportConfig(critic=str(formatted_critic_dir), task="edit", max_new_tokens=32, threads=1),
        f"{get_settings().bucket_uris()['models']}/probe/triton",
    )  # fmt: skip
    home = get_settings().home
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    # The probe step sees the service up and ready and the process filter sees its one tritonserver, then fails the
    # run on purpose: the exit handler must still stop the server. After a run that succeeds the `firm` pipeline's
    # own exit handler is asserted by tests/test_quickstart.py (no tritonserver of its FIRM_HOME left, no record).
    with pytest.raises(RuntimeError, match="FAILURE"):
        deploy_probe(repository=repo, fail=True, repo=str(REPO))
    assert tritonservers(home) == [], "a failed run must stop its tritonserver too"
    assert not list((get_settings().home / "services").glob("*.json")), "no service record may remain"
