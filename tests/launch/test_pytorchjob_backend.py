"""`PyTorchJobBackend` through the real kubeflow-training `TrainingClient` and kubernetes client, against a local HTTP
endpoint answering like the API server (tests/launch/k8s_api.py). This checks FIRM's calls and its handling of API
answers — not the Training Operator, which no test here runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from firm.launch.backend import JobError
from firm.launch.pytorchjob import PyTorchJobBackend
from firm.launch.spec import load_job_spec, resolve_job
from tests.launch.conftest import REPO, SPECS
from tests.launch.k8s_api import FakeKubeAPI, serve, write_kubeconfig

SPEC_2X8 = SPECS / "critic-sft-qwen3vl-8b-2x8.yaml"
NAME = "critic-sft-qwen3vl-8b-2x8"


def _job(overrides: list[str] | None = None):
    return resolve_job(load_job_spec(SPEC_2X8, overrides), "pytorchjob")


def _posts(kube: FakeKubeAPI) -> list[dict]:
    return [
        body for method, path, body in kube.requests if method == "POST" and path.endswith("/pytorchjobs")
    ]


def test_submit_creates_the_rendered_job_and_status_follows_its_conditions(kube: FakeKubeAPI) -> None:
    backend = PyTorchJobBackend()
    st = backend.submit(_job())
    (body,) = _posts(kube)
    assert body["kind"] == "PyTorchJob" and body["metadata"]["name"] == NAME
    assert body["metadata"]["namespace"] == "firm"
    assert body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    # the path of the create: the namespaced custom-object endpoint of kubeflow.org/v1
    assert ("POST", "/apis/kubeflow.org/v1/namespaces/firm/pytorchjobs") in [
        (m, p) for m, p, _ in kube.requests
    ]
    phases = [st.phase] + [backend.status(NAME).phase for _ in range(3)]
    assert phases == ["Running", "Succeeded", "Succeeded", "Succeeded"]
    final = backend.status(NAME)
    assert final.succeeded and final.namespace == "firm" and final.finished is not None
    assert final.checkpoint_uri == f"s3://firm-checkpoints/{NAME}"
    done = {"active": 0, "succeeded": 1, "failed": 0}
    assert final.replicas == {"master": done, "worker": done}


def test_wait_reports_failure_with_the_operators_message(kube: FakeKubeAPI) -> None:
    kube.scripts[NAME] = ["Created", "Running", "Restarting", "Running", "Failed"]
    backend = PyTorchJobBackend()
    backend.submit(_job())
    st = backend.wait(NAME, timeout=10, poll=0.01)
    assert st.phase == "Failed" and "1 Master replica(s) failed" in st.message


def test_logs_of_master_and_worker_pods(kube: FakeKubeAPI) -> None:
    backend = PyTorchJobBackend()
    backend.submit(_job())
    kube.pod_logs[f"{NAME}-master-0"] = "rank 0 starting\nstep 1 loss 2.0\n"
    kube.pod_logs[f"{NAME}-worker-0"] = "rank 8 starting\n"
    assert list(backend.logs(NAME)) == ["rank 0 starting", "step 1 loss 2.0"]
    assert list(backend.logs(NAME, "worker", 0)) == ["rank 8 starting"]
    assert list(backend.logs(NAME, "master", 0, follow=True)) == ["rank 0 starting", "step 1 loss 2.0"]
    gets = [p for m, p, _ in kube.requests if p.endswith("/log")]
    assert f"/api/v1/namespaces/firm/pods/{NAME}-worker-0/log" in gets
    with pytest.raises(JobError, match="no worker-1 pod"):
        list(backend.logs(NAME, "worker", 1))


def test_cancel_deletes_the_job(kube: FakeKubeAPI) -> None:
    backend = PyTorchJobBackend()
    backend.submit(_job())
    st = backend.cancel(NAME)
    assert st.phase == "Cancelled"
    assert ("DELETE", f"/apis/kubeflow.org/v1/namespaces/firm/pytorchjobs/{NAME}") in [
        (m, p) for m, p, _ in kube.requests
    ]
    with pytest.raises(JobError, match=f"no PyTorchJob named '{NAME}' in namespace 'firm'"):
        backend.status(NAME)
    assert backend.list() == []


def test_resubmission_refuses_running_and_finished_runs_and_restarts_failed_ones(kube: FakeKubeAPI) -> None:
    kube.scripts[NAME] = ["Created", "Running", "Running", "Succeeded"]  # one step per read of the job
    backend = PyTorchJobBackend()
    backend.submit(_job())
    with pytest.raises(JobError, match="already exists \\(Running\\)"):
        backend.submit(_job())
    backend.wait(NAME, timeout=5, poll=0.01)  # Succeeded
    with pytest.raises(JobError, match="already finished successfully; a finished run is never overwritten"):
        backend.submit(_job())
    assert len(_posts(kube)) == 3 and len(kube.jobs) == 1

    kube.scripts["rl-sd35m-nft-qma-1x8"] = ["Created", "Failed"]
    rl = resolve_job(load_job_spec(SPECS / "rl-sd35m-nft-qma-1x8.yaml"), "pytorchjob")
    backend.submit(rl)
    assert backend.status(rl.name).phase == "Failed"
    kube.scripts["rl-sd35m-nft-qma-1x8"] = ["Created", "Running"]
    st = backend.submit(rl)  # a failed run is deleted and created again: it resumes from its checkpoint
    assert st.phase in ("Pending", "Running")
    methods = [(m, p.rsplit("/", 1)[-1]) for m, p, _ in kube.requests]
    assert methods.index(("DELETE", rl.name)) < len(methods) - 1 - methods[::-1].index(
        ("POST", "pytorchjobs")
    )


def test_list_shows_every_job_of_the_namespace(kube: FakeKubeAPI) -> None:
    backend = PyTorchJobBackend()
    backend.submit(_job())
    backend.submit(resolve_job(load_job_spec(SPECS / "rl-sd35m-nft-qma-1x8.yaml"), "pytorchjob"))
    assert sorted(j.name for j in backend.list()) == [NAME, "rl-sd35m-nft-qma-1x8"]


def test_api_errors_become_one_line_messages_that_say_what_to_check(kube: FakeKubeAPI) -> None:
    kube.forbidden.add("firm")
    with pytest.raises(JobError) as info:
        PyTorchJobBackend().submit(_job())
    assert "forbidden" in str(info.value) and "RBAC" in str(info.value) and "\n" not in str(info.value)

    with pytest.raises(JobError, match="namespace 'elsewhere' does not exist or the PyTorchJob resource"):
        PyTorchJobBackend(namespace="elsewhere").submit(_job())

    kube.forbidden.clear()
    kube.validate = lambda obj: (_ for _ in ()).throw(ValueError("spec.pytorchReplicaSpecs: Required value"))
    with pytest.raises(JobError, match=r"rejected PyTorchJob firm/.*Required value"):
        PyTorchJobBackend().submit(_job())


def test_an_unreachable_cluster_is_one_error_naming_its_address(tmp_path: Path, monkeypatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}")))
    with pytest.raises(JobError, match=f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}"):
        PyTorchJobBackend().status("anything")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(JobError, match="no usable Kubernetes configuration"):
        PyTorchJobBackend().status("anything")


def _firmctl(*args: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "job", *args], capture_output=True, text=True, cwd=REPO,
        env=env, check=False, timeout=120,
    )  # fmt: skip


def test_cli_submit_status_logs_cancel_against_the_endpoint(kube: FakeKubeAPI, monkeypatch) -> None:
    import os

    env = {
        "KUBECONFIG": os.environ["KUBECONFIG"],
        "FIRM_NAMESPACE": "firm",
        "FIRM_HOME": os.environ["FIRM_HOME"],
    }
    sub = _firmctl("submit", "--config", str(SPEC_2X8), env_extra=env)
    assert sub.returncode == 0, sub.stderr
    assert json.loads(sub.stdout)["name"] == NAME
    kube.pod_logs[f"{NAME}-master-0"] = "hello from rank 0\n"
    follow = _firmctl(
        "submit", "--config", str(SPECS / "rl-sd35m-nft-qma-1x8.yaml"), "--follow", env_extra=env
    )
    assert follow.returncode == 0, follow.stderr
    assert "Succeeded" in follow.stderr
    st = _firmctl("status", NAME, env_extra=env)
    assert json.loads(st.stdout)["phase"] in ("Running", "Succeeded")
    logs = _firmctl("logs", NAME, env_extra=env)
    assert logs.stdout == "hello from rank 0\n"
    listed = _firmctl("list", "--json", env_extra=env)
    assert {j["name"] for j in json.loads(listed.stdout)} == {NAME, "rl-sd35m-nft-qma-1x8"}
    cancel = _firmctl("cancel", NAME, env_extra=env)
    assert json.loads(cancel.stdout)["phase"] == "Cancelled"
    gone = _firmctl("status", NAME, env_extra=env)
    assert gone.returncode == 1 and gone.stderr.strip().splitlines() == [
        f"error: no PyTorchJob named '{NAME}' in namespace 'firm'"
    ]


def test_cli_failed_job_with_follow_exits_non_zero(kube: FakeKubeAPI) -> None:
    import os

    kube.scripts["rl-sd35m-nft-qma-1x8"] = ["Created", "Running", "Failed"]
    env = {
        "KUBECONFIG": os.environ["KUBECONFIG"],
        "FIRM_NAMESPACE": "firm",
        "FIRM_HOME": os.environ["FIRM_HOME"],
    }
    out = _firmctl("submit", "--config", str(SPECS / "rl-sd35m-nft-qma-1x8.yaml"), "--wait", env_extra=env)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: job rl-sd35m-nft-qma-1x8 failed:")


def test_second_fake_server_isolated(tmp_path: Path, monkeypatch) -> None:
    """Two endpoints, two kubeconfigs: the backend talks to the one its KUBECONFIG names when it is created."""
    a, b = FakeKubeAPI(), FakeKubeAPI()
    with serve(a) as url_a, serve(b) as url_b:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "a", url_a)))
        PyTorchJobBackend().submit(_job())
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "b", url_b)))
        assert PyTorchJobBackend().list() == []
    assert len(a.jobs) == 1 and not b.jobs
