"""FIRM on a stock Kubeflow cluster (issue 26), launcher side, against the fake API server (tests/launch/k8s_api.py):
job resources from the node pool and `/dev/shm` within the memory limit, a deadline and a finite backoff on every
job, OOM kills reported as such and not retried, a restarted launcher step re-attaching to its job (only a run
termination cancels it), image pull Secrets and the Istio opt-out on job pods, and `firmctl cluster doctor` on a
ready and a broken cluster."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from firm.errors import ConfigError
from firm.launch.backend import JobError
from firm.launch.pytorchjob import PyTorchJobBackend
from firm.launch.render import build_pytorchjob, to_dict
from firm.launch.spec import DEFAULT_DEADLINE_S, JobSpec, load_job_spec, resolve_job, step_job_spec
from tests.launch.conftest import REPO, SPECS
from tests.launch.k8s_api import FakeKubeAPI, add_object, healthy_cluster

SPEC_2X8 = SPECS / "critic-sft-qwen3vl-8b-2x8.yaml"
NAME = "critic-sft-qwen3vl-8b-2x8"


def _pod(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]


def _step_job(**kw):
    spec = step_job_spec("sft", "run-1234", recipe="critic/qwen3vl_8b_edit_full", overrides=[], pool="gpu-h100",
                         nodes=1, nproc_per_node=0, image="", **kw)  # fmt: skip
    return resolve_job(spec, "pytorchjob")


# ------------------------------------------------------------------ A3: resources, /dev/shm, deadlines, OOM


def test_pipeline_jobs_take_resources_and_shm_from_their_pool_within_the_memory_limit() -> None:
    pod = _pod(to_dict(build_pytorchjob(_step_job())))
    (c,) = pod["spec"]["containers"]
    limits = c["resources"]["limits"]
    assert (limits["cpu"], limits["memory"], limits["nvidia.com/gpu"]) == ("96", "900Gi", "8")
    assert c["resources"]["requests"]["memory"] == "900Gi"
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi"}


def test_shm_above_the_memory_limit_is_one_error_naming_the_field(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC_2X8.read_text())
    with pytest.raises(ConfigError) as info:
        resolve_job(load_job_spec(spec, ["shm_size=16Gi", "resources.limits.memory=8Gi"]), "pytorchjob")
    msg = str(info.value)
    assert "'shm_size'" in msg and "16Gi" in msg and "resources.limits.memory=8Gi" in msg and "\n" not in msg
    # a pool whose /dev/shm exceeds its memory is refused when the settings load
    from firm.launch.cluster import JobResources

    with pytest.raises(ValueError, match=r"shm_size 16Gi exceeds job_resources\.memory 8Gi"):
        JobResources(memory="8Gi", shm_size="16Gi")


def test_every_job_has_a_deadline_and_a_finite_backoff() -> None:
    run_policy = to_dict(build_pytorchjob(_step_job()))["spec"]["runPolicy"]
    assert run_policy["activeDeadlineSeconds"] == DEFAULT_DEADLINE_S and run_policy["backoffLimit"] == 3
    timed = to_dict(build_pytorchjob(_step_job(timeout_s=3600.0)))["spec"]["runPolicy"]
    assert timed["activeDeadlineSeconds"] == 3600
    with pytest.raises(ValidationError, match="less than or equal to 100"):
        JobSpec.model_validate({"name": "x", "recipe": "x", "pool": "cpu", "backoff_limit": 10**6})


def test_an_oom_killed_job_says_so(kube: FakeKubeAPI) -> None:
    kube.scripts[NAME] = ["Created", "Running", "Failed"]
    kube.pod_statuses[f"{NAME}-master-0"] = {"containerStatuses": [{
        "name": "pytorch", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
    }]}  # fmt: skip
    backend = PyTorchJobBackend()
    backend.submit(resolve_job(load_job_spec(SPEC_2X8), "pytorchjob"))
    st = backend.wait(NAME, timeout=5, poll=0.01)
    assert st.phase == "Failed" and st.reason == "OOMKilled"
    assert st.message.startswith("out of memory: raise resources.memory")


def test_a_job_stopped_by_a_reward_hacking_alarm_says_so(kube: FakeKubeAPI) -> None:
    # the RL trainer exits 4 (ALARM_EXIT_CODE) and writes its alarm line to the termination log
    line = "stopped_by_alarm: identity alarm at step 3: 0.75 of edits copy the source (threshold 0.5)"
    kube.scripts[NAME] = ["Created", "Running", "Failed"]
    kube.pod_statuses[f"{NAME}-master-0"] = {"containerStatuses": [{
        "name": "pytorch", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
        "state": {"terminated": {"exitCode": 4, "reason": "Error", "message": line + "\n"}},
    }]}  # fmt: skip
    backend = PyTorchJobBackend()
    backend.submit(resolve_job(load_job_spec(SPEC_2X8), "pytorchjob"))
    st = backend.wait(NAME, timeout=5, poll=0.01)
    assert st.phase == "Failed" and st.reason == "stopped_by_alarm" and st.exit_code == 4
    assert st.message == line
    # exit code 1 is an ordinary failure, not an alarm stop
    kube.pod_statuses[f"{NAME}-master-0"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 1
    assert PyTorchJobBackend().status(NAME).reason != "stopped_by_alarm"


def test_the_rl_step_writes_its_gallery_then_fails_with_the_alarm_line(
    kube: FakeKubeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import firm.rl.report
    import firm.storage
    from firm.config import get_settings
    from pipelines.components.launch import rl_train

    store: dict[str, bytes] = {}  # the object store the run wrote (`s3://firm-checkpoints/<job>/...`)

    def read_bytes(uri: str) -> bytes:
        if uri not in store:
            raise FileNotFoundError(uri)
        return store[uri]

    monkeypatch.setattr(firm.storage, "read_bytes", read_bytes)
    monkeypatch.setattr(firm.rl.report, "read_run_metrics", lambda uri: [])
    get_settings(fresh=True)

    name, line = "firm-rl-hack1", "stopped_by_alarm: identity alarm at step 2: 0.9 of edits copy the source"
    kube.scripts[name] = ["Created", "Running", "Failed"]
    kube.pod_statuses[f"{name}-master-0"] = {"containerStatuses": [{
        "name": "pytorch", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
        "state": {"terminated": {"exitCode": 4, "reason": "Error", "message": line}},
    }]}  # fmt: skip

    class Art:
        def __init__(self, path: Path) -> None:
            self.path, self.metadata = str(path), {}

        def log_metric(self, key: str, value: float) -> None:
            raise AssertionError("a stopped run logs no final metrics")

    gallery, curves = tmp_path / "gallery.html", tmp_path / "curves.html"

    def run_step() -> None:  # the KFP rl-train step, launching its PyTorchJob on the fake API server
        rl_train.python_func(
            recipe="rl/sd35m_nft_qma", overrides=[], reward_url="", run_id="hack1", pool="gpu-h100", nodes=1,
            nproc_per_node=8, image="", backend="pytorchjob", timeout_s=0.0, lora=Art(tmp_path / "lora"),
            metrics=Art(tmp_path / "m"), curves=Art(curves), gallery=Art(gallery),
        )  # fmt: skip

    with pytest.raises(JobError) as info:
        run_step()
    msg = str(info.value)
    assert msg.startswith(line + f" (job {name}; gallery: firmctl rl report ") and "\n" not in msg
    assert f"firmctl rl report s3://firm-checkpoints/{name})" in msg
    # the run's own gallery (what the alarm flagged) is the step's artifact; a stopped run has no final metrics
    assert "<html" in gallery.read_text().lower() and "No audit" in gallery.read_text() and curves.is_file()
    store[f"s3://firm-checkpoints/{name}/audit/gallery.html"] = b"<html>flagged sample 7</html>"
    with pytest.raises(JobError):
        run_step()
    assert gallery.read_text() == "<html>flagged sample 7</html>"
    # any other failure is the job's own error, with no gallery written
    gallery.unlink()
    kube.pod_statuses[f"{name}-master-0"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 1
    kube.scripts[name] = ["Created", "Running", "Failed"]
    with pytest.raises(JobError) as info:
        run_step()
    assert "stopped_by_alarm" not in str(info.value) and not gallery.exists()


def test_a_worker_killed_by_the_oom_killer_is_a_permanent_failure(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from firm.launch import torchrun_quiet as tq

    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert tq.oom_kills((events,)) == 1 and tq.oom_kills((tmp_path / "absent",)) == 0
    monkeypatch.setattr(tq, "TERMINATION_LOG", tmp_path / "termination-log")
    code = tq.killed_exit(2, 9, "firm.critic.sft", oom=1)
    assert 0 < code < 128  # the Training Operator retries only exit codes >= 128
    assert (tmp_path / "termination-log").read_text().startswith("out of memory: raise resources.memory")
    assert tq.killed_exit(2, 15, "firm.critic.sft", oom=0) == 143  # preemption: retried


# ------------------------------------------------------------------ B: re-attach; only a run termination cancels


def test_a_restarted_launcher_step_reattaches_to_its_running_job(kube: FakeKubeAPI) -> None:
    from firm.launch.runner import run_job

    kube.scripts[NAME] = ["Created", "Running", "Running", "Running", "Succeeded"]
    PyTorchJobBackend().submit(
        resolve_job(load_job_spec(SPEC_2X8), "pytorchjob")
    )  # the first attempt's submit
    lines: list[str] = []
    run = run_job(load_job_spec(SPEC_2X8), "pytorchjob", poll=0.01, on_line=lines.append)
    assert run.status.succeeded
    posts = [m for m, p, _ in kube.requests if m == "POST" and p.endswith("/pytorchjobs")]
    deletes = [m for m, _, _ in kube.requests if m == "DELETE"]
    assert len(posts) == 1 and not deletes, "neither a duplicate nor a cancelled job"
    assert any("re-attaching" in ln for ln in lines)


@pytest.fixture
def step_pod(kube: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """This process is a KFP step pod of workflow `wf-1` (the env KFP's compiler gives every step)."""
    monkeypatch.setenv("KFP_POD_NAME", "firm-wf-1-launcher")
    monkeypatch.setenv("POD_NAMESPACE", "firm")
    add_object(kube, "pods", "firm", "firm-wf-1-launcher",
               metadata={"labels": {"workflows.argoproj.io/workflow": "wf-1"}})  # fmt: skip
    wf = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "wf-1"}, "spec": {}}
    kube.objects["/apis/argoproj.io/v1alpha1/namespaces/firm/workflows/wf-1"] = wf
    yield wf


def _run_and_stop(kube: FakeKubeAPI) -> str:
    from firm.launch.runner import run_job

    kube.scripts[NAME] = ["Created"] + ["Running"] * 100000
    done = threading.Event()

    def stop_once_running() -> None:  # SIGTERM, as the kubelet sends it, once the job runs
        while not done.is_set() and not kube.jobs:
            done.wait(0.05)
        if not done.wait(0.5):
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_running, daemon=True).start()
    try:
        with pytest.raises(JobError) as info:
            run_job(load_job_spec(SPEC_2X8), "pytorchjob", poll=0.02, on_line=lambda _: None)
    finally:
        done.set()
    return str(info.value)


def test_an_evicted_launcher_step_leaves_its_job_running(kube: FakeKubeAPI, step_pod: dict) -> None:
    msg = _run_and_stop(kube)
    assert "left running" in msg and "re-attaches" in msg
    assert ("firm", NAME) in kube.jobs and not [m for m, _, _ in kube.requests if m == "DELETE"]


def test_a_terminated_run_cancels_its_job(kube: FakeKubeAPI, step_pod: dict) -> None:
    step_pod["spec"]["activeDeadlineSeconds"] = 0  # what KFP's TerminateRun patches into the workflow
    msg = _run_and_stop(kube)
    assert "cancelled" in msg and ("firm", NAME) not in kube.jobs


# ------------------------------------------------------------------ A5 / A6: pull Secrets, Istio opt-out


def test_job_pods_carry_the_pull_secrets_and_the_istio_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from firm.config import get_settings

    monkeypatch.setenv("FIRM_CLUSTER__IMAGE_PULL_SECRETS", '["regcred"]')
    get_settings(fresh=True)
    pod = _pod(to_dict(build_pytorchjob(resolve_job(load_job_spec(SPEC_2X8), "pytorchjob"))))
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"


# ------------------------------------------------------------------ C: firmctl cluster doctor


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def network_settings(monkeypatch: pytest.MonkeyPatch, listening: int) -> None:
    from firm.config import get_settings

    monkeypatch.setenv("FIRM_STORE_URI", "s3://firm-datasets")
    monkeypatch.setenv("FIRM_S3_ENDPOINT", f"127.0.0.1:{listening}")
    monkeypatch.setenv("FIRM_TRITON_URL", f"127.0.0.1:{listening}")
    get_settings(fresh=True)


def _doctor_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "firm.cli.main", "cluster", "doctor", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, check=False, timeout=120)  # fmt: skip


def test_cluster_doctor_on_a_ready_cluster(kube: FakeKubeAPI, network_settings: None) -> None:
    from firm.launch.doctor import cluster_doctor

    healthy_cluster(kube)
    report = cluster_doctor()
    failed = [c for c in report.checks if c.ok is False]
    assert report.ok, failed
    assert report.training_backends == ["pytorchjob", "trainjob"] and report.kfp_version == "2.15.0"
    names = {c.name for c in report.checks}
    assert {"pytorchjobs.kubeflow.org", "Kubeflow Pipelines", "pool gpu-h100", "object store",
            "secret firm/firm-object-store", "namespace firm"} <= names  # fmt: skip
    # SubjectAccessReviews as the pipeline ServiceAccount, one per verb
    sars = [b for m, p, b in kube.requests if p.endswith("/subjectaccessreviews")]
    assert sars and all(b["spec"]["user"] == "system:serviceaccount:firm:firm-pipeline-runner" for b in sars)
    out = _doctor_cli("--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["ok"] is True


def test_cluster_doctor_on_a_broken_cluster_names_each_problem_and_its_fix(
    kube: FakeKubeAPI, network_settings: None
) -> None:
    from firm.launch.doctor import cluster_doctor

    healthy_cluster(kube, kfp_version="2.4.1")
    del kube.objects["/apis/apiextensions.k8s.io/v1/customresourcedefinitions/pytorchjobs.kubeflow.org"]
    del kube.objects["/api/v1/namespaces/firm/secrets/firm-object-store"]
    kube.grants = {g for g in kube.grants if not (g[2] == "pytorchjobs" and g[3] == "delete")}
    kube.nodes[1]["status"]["allocatable"].pop("nvidia.com/gpu")
    report = cluster_doctor(network=False)
    bad = {c.name: c for c in report.checks if c.ok is False}
    assert set(bad) == {
        "pytorchjobs.kubeflow.org", "training backend", "Kubeflow Pipelines", "secret firm/firm-object-store",
        "firm-pipeline-runner: pytorchjobs (kubeflow.org) in firm", "pool gpu-h100",
    }, sorted(bad)  # fmt: skip
    assert all(c.fix for c in bad.values())
    assert report.training_backends == ["trainjob"]
    assert "denied: delete" in bad["firm-pipeline-runner: pytorchjobs (kubeflow.org) in firm"].detail
    assert "2.15.0" in bad["Kubeflow Pipelines"].fix
    out = _doctor_cli("--no-network")
    assert out.returncode == 1
    assert "✗" in out.stdout and "firm-object-store" in out.stdout and "6 problem(s)" in out.stdout


# ------------------------------------------------------------------ the RBAC table of tests/deploy


def test_every_call_a_launcher_step_makes_is_in_the_rbac_table_and_the_doctors_list(
    kube: FakeKubeAPI, step_pod: dict
) -> None:
    """The calls recorded here (submit, status, logs, OOM check, re-attach, stop) are each in tests/deploy's table
    of what the pipeline ServiceAccount does, and in `PIPELINE_PERMISSIONS`, which the doctor reviews."""
    rbac = pytest.importorskip("tests.deploy.rbac")
    from firm.launch.doctor import PIPELINE_PERMISSIONS
    from tests.deploy.rbac_calls import FIRM_CALLS, KFP_CALLS

    kube.scripts[NAME] = ["Created", "Running", "Restarting", "Running", "Succeeded"]
    _run_and_stop(kube)
    table = {(c.verb, c.group, c.resource) for c in [*FIRM_CALLS, *KFP_CALLS]}
    doctor = {(v, p.group, p.resource + (f"/{p.subresource}" if p.subresource else ""))
              for p in PIPELINE_PERMISSIONS for v in p.verbs}  # fmt: skip
    recorded = {
        (c.verb, c.group, c.resource)
        for m, path, _ in kube.requests
        if "/namespaces/" in path
        for c in [rbac.call_from_request("firm-step", m, path)]
    }
    assert recorded, "no calls recorded"
    assert recorded <= table, sorted(recorded - table)
    assert recorded <= doctor, sorted(recorded - doctor)
