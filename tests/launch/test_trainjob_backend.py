"""Kubeflow Trainer v2: every job spec renders to a TrainJob that validates against Trainer v2.3's CRD and names a
runtime Trainer installs; the same `ResolvedJob` renders to a PyTorchJob and a TrainJob with the same image,
command, GPUs, node pool, shm and deadline; submit / status / logs / cancel / re-attach run against the fake API
server (tests.launch.k8s_trainjobs) with Trainer's condition sequences; `auto` picks the backend the cluster has.
No Kubernetes API server runs here: these check FIRM's calls at the HTTP boundary, not Trainer itself."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from firm.launch.render import build_pytorchjob, to_dict
from firm.launch.spec import load_job_spec, resolve_job
from firm.launch.trainjob_render import NODE, SETTINGS_ENV, build_trainjob
from tests.fixtures.trainer_crd import default_runtime, validate_trainjob
from tests.launch.conftest import REPO, SPECS
from tests.launch.k8s_api import add_crd, serve, write_kubeconfig
from tests.launch.k8s_trainjobs import FakeTrainerAPI

SHIPPED = sorted(SPECS.glob("*.yaml"))
EXAMPLES = REPO / "k8s" / "trainjobs"


@pytest.fixture
def trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTrainerAPI]:
    """A fake API server with Trainer v2's trainjobs (namespace `firm`, the default runtime installed)."""
    api = FakeTrainerAPI(namespaces=("firm",))
    api.validate_trainjob = validate_trainjob
    with serve(api) as url:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        monkeypatch.setenv("FIRM_NAMESPACE", "firm")
        yield api


def _job(path: Path, backend: str = "trainjob", overrides: list[str] | None = None) -> Any:
    return resolve_job(load_job_spec(path, overrides), backend)  # type: ignore[arg-type]


def _node_pod(tj: dict[str, Any]) -> dict[str, Any]:
    (patch,) = tj["spec"]["runtimePatches"]
    (rj,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rj["name"] == NODE
    return rj["template"]["spec"]["template"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_spec_renders_to_a_valid_trainjob_on_an_installed_runtime(path: Path) -> None:
    tj = build_trainjob(_job(path), "firm").to_dict()
    validate_trainjob(tj)
    runtime = default_runtime()
    assert tj["spec"]["runtimeRef"] == {
        "name": runtime["metadata"]["name"], "kind": runtime["kind"], "apiGroup": "trainer.kubeflow.org",
    }  # fmt: skip
    # the patch names the runtime's own replicated job and container, or Trainer would reject it
    (rj,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert rj["name"] == NODE and rj["template"]["spec"]["template"]["spec"]["containers"][0]["name"] == NODE
    assert [c["name"] for c in _node_pod(tj)["spec"]["containers"]] == [NODE]
    # torchrun's rendezvous is the runtime's (PET_*): FIRM sets none of it
    env = {e["name"] for e in tj["spec"]["trainer"].get("env", [])}
    assert not {n for n in env if n.startswith(("PET_", "MASTER_", "WORLD_SIZE", "RANK"))}
    assert not any(a.startswith(("--nnodes", "--master", "--rdzv")) for a in tj["spec"]["trainer"]["command"])


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_resolved_job_renders_the_same_as_a_pytorchjob_and_a_trainjob(path: Path) -> None:
    job = _job(path)
    pj = to_dict(build_pytorchjob(job, "firm"))
    tj = build_trainjob(job, "firm").to_dict()
    master = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    (pc,) = master["spec"]["containers"]
    pod = _node_pod(tj)
    trainer = tj["spec"]["trainer"]
    # image, command, world
    assert trainer["image"] == pc["image"] == job.image
    assert trainer["command"] == pc["command"]
    assert trainer["numNodes"] == job.spec.nodes and trainer["numProcPerNode"] == int(
        pj["spec"]["nprocPerNode"]
    )
    # GPUs, CPU and memory per node
    assert trainer.get("resourcesPerNode") == pc.get("resources")
    gpus = (pc.get("resources") or {}).get("limits", {}).get(job.pool.gpu_resource)
    assert gpus == (str(job.gpus_per_node) if job.gpus_per_node else None)
    # node pool, tolerations, volumes (shm with its size limit), mounts, ServiceAccount, pull Secrets, security
    for key in (
        "nodeSelector",
        "tolerations",
        "volumes",
        "serviceAccountName",
        "imagePullSecrets",
        "securityContext",
    ):
        assert pod["spec"].get(key) == master["spec"].get(key), key
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": job.shm_size}
    (nc,) = pod["spec"]["containers"]
    assert nc["volumeMounts"] == pc["volumeMounts"] and nc["securityContext"] == pc["securityContext"]
    # labels, annotations and the Istio opt-out on the pods; the deadline
    assert pod["metadata"] == master["metadata"]
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert tj["spec"]["activeDeadlineSeconds"] == pj["spec"]["runPolicy"]["activeDeadlineSeconds"]
    assert tj["metadata"]["annotations"] == pj["metadata"]["annotations"]
    # plain env the same; the settings ConfigMap (envFrom on a PyTorchJob) as optional key references
    penv = {e["name"]: e for e in pc.get("env", [])}
    tenv = {e["name"]: e for e in trainer.get("env", [])}
    assert {k: v for k, v in tenv.items() if k in penv} == penv
    cm = pc["envFrom"][0]["configMapRef"]["name"]
    assert {k for k in tenv if k not in penv} == set(SETTINGS_ENV) - set(penv)
    assert all(tenv[k]["valueFrom"]["configMapKeyRef"] == {"name": cm, "key": k, "optional": True}
               for k in SETTINGS_ENV if k not in penv)  # fmt: skip


@pytest.mark.parametrize(
    ("entrypoint", "recipe", "pool", "nodes"),
    [("sft", "critic/qwen3vl_8b_edit_full", "gpu-h100", 1), ("rl", "rl/sd35m_nft_qma", "gpu-h100", 1),
     ("sft", "critic/tiny_cpu", "cpu", 1)],
)  # fmt: skip
def test_pipeline_step_jobs_render_to_valid_trainjobs(
    entrypoint: str, recipe: str, pool: str, nodes: int
) -> None:
    """What a pipeline's launcher step submits (`step_job_spec`) with the settings' backend trainjob."""
    from firm.launch.spec import step_job_spec

    spec = step_job_spec(entrypoint, "3F2504E0-4F89-11D3-9A0C-0305E82C3301", recipe=recipe, overrides=[],
                         pool=pool, nodes=nodes, nproc_per_node=0, image="", timeout_s=3600)  # fmt: skip
    job = resolve_job(spec, "trainjob")
    tj = build_trainjob(job, "team-a").to_dict()
    validate_trainjob(tj)
    assert tj["metadata"]["name"] == spec.name and tj["spec"]["activeDeadlineSeconds"] == 3600
    assert tj["spec"]["trainer"]["numNodes"] == nodes


def test_settings_the_pods_read_are_keys_of_the_charts_configmap() -> None:
    template = (REPO / "charts" / "firm" / "templates" / "settings-configmap.yaml").read_text()
    assert all(f'"{key}"' in template for key in SETTINGS_ENV), [
        k for k in SETTINGS_ENV if f'"{k}"' not in template
    ]


def test_examples_in_k8s_trainjobs_are_current_and_valid() -> None:
    """k8s/trainjobs/<spec>.yaml is `firmctl job render --backend trainjob` of each shipped spec (default settings);
    regenerate with `python -m tests.launch.test_trainjob_backend`."""
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == [p.name for p in SHIPPED]
    for path in SHIPPED:
        text = (EXAMPLES / path.name).read_text()
        assert text == _example(path), f"k8s/trainjobs/{path.name} is stale"
        validate_trainjob(yaml.safe_load(text))


def _example(path: Path) -> str:
    from firm.launch.trainjob_render import render_trainjob_yaml

    body = render_trainjob_yaml(_job(path), "firm")
    return (
        f"# GENERATED from k8s/jobs/{path.name} by `python -m tests.launch.test_trainjob_backend` (the same as\n"
        f"# `firmctl job render --backend trainjob --config k8s/jobs/{path.name}` with default settings): do not "
        "edit.\n# A Kubeflow Trainer v2 TrainJob on the torch-distributed runtime; `kubectl apply -f` takes it.\n"
        + body
    )


# ---------------------------------------------------------------------------------------------- the backend


def _tiny() -> Any:
    return _job(SPECS / "critic-sft-tiny-cpu.yaml")


def test_submit_status_logs_cancel_through_conditions(trainer: FakeTrainerAPI) -> None:
    from firm.launch.trainjob import TrainJobBackend

    b = TrainJobBackend()
    job = _job(SPECS / "critic-sft-tiny-cpu.yaml", overrides=["nodes=2"])
    trainer.trainjob_scripts[job.name] = ["created", "running", "running", "complete"]
    st = b.submit(job)  # create, then one GET: running
    assert st.backend == "trainjob" and st.namespace == "firm" and st.phase == "Running"
    assert st.checkpoint_uri == job.checkpoint_uri and st.replicas["node"]["active"] == 1
    (post,) = [body for m, p, body in trainer.requests if m == "POST" and p.endswith("/trainjobs")]
    assert post["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer.pod_logs[f"{job.name}-node-0-1"] = "rank 2 of 4\nnode 1 done\n"
    assert list(b.logs(job.name, "worker", 1)) == ["rank 2 of 4", "node 1 done"]
    assert [s.name for s in b.list()] == [job.name]
    assert b.wait(job.name, poll=0.01).phase == "Succeeded"
    # a finished run is never overwritten
    with pytest.raises(Exception, match="already finished successfully"):
        b.submit(job)
    assert b.cancel(job.name).phase == "Cancelled"
    with pytest.raises(Exception, match=f"no TrainJob named '{job.name}'"):
        b.status(job.name)


def test_failed_and_suspended_jobs(trainer: FakeTrainerAPI) -> None:
    from firm.launch.trainjob import TrainJobBackend

    b = TrainJobBackend()
    job = _tiny()
    trainer.trainjob_scripts[job.name] = ["created", "suspended", "failed"]
    suspended = b.submit(job)  # each GET moves the fake job one step: created → suspended → failed
    assert suspended.phase == "Pending" and suspended.message == "TrainJob is suspended"
    failed = b.status(job.name)
    assert (
        failed.phase == "Failed"
        and failed.reason == "FailedJobs"
        and "BackoffLimitExceeded" in failed.message
    )
    # the same name again: a failed job is replaced and runs again (continuing from its checkpoints)
    trainer.trainjob_scripts[job.name] = ["created", "running"]
    assert b.submit(job).phase == "Running"
    assert [m for m, p, _ in trainer.requests if p.endswith(f"/trainjobs/{job.name}") and m == "DELETE"]


def test_an_oom_killed_node_is_reported_as_oom(trainer: FakeTrainerAPI) -> None:
    from firm.launch.trainjob import TrainJobBackend

    b = TrainJobBackend()
    job = _tiny()
    trainer.trainjob_scripts[job.name] = ["created", "failed"]
    trainer.pod_statuses[f"{job.name}-node-0-0"] = {
        "containerStatuses": [{"name": NODE, "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                               "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
    }  # fmt: skip
    b.submit(job)
    st = b.status(job.name)
    assert st.phase == "Failed" and st.reason == "OOMKilled"
    assert st.message.startswith("out of memory: raise resources.memory")


def test_a_node_stopped_by_a_reward_hacking_alarm_says_so(trainer: FakeTrainerAPI) -> None:
    from firm.launch.trainjob import TrainJobBackend

    line = "stopped_by_alarm: parse_failures alarm at step 5: parse-failure rate 0.4 above 0.2"
    b = TrainJobBackend()
    job = _tiny()
    trainer.trainjob_scripts[job.name] = ["created", "failed"]
    trainer.pod_statuses[f"{job.name}-node-0-0"] = {
        "containerStatuses": [{"name": NODE, "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                               "state": {"terminated": {"exitCode": 4, "reason": "Error", "message": line}}}],
    }  # fmt: skip
    b.submit(job)
    st = b.status(job.name)
    assert st.phase == "Failed" and st.reason == "stopped_by_alarm" and st.exit_code == 4
    assert st.message == line
    # without a termination message the status still names the alarm stop and where to read its line
    del trainer.pod_statuses[f"{job.name}-node-0-0"]["containerStatuses"][0]["state"]["terminated"]["message"]
    st = b.status(job.name)
    assert st.reason == "stopped_by_alarm" and st.message.startswith("stopped_by_alarm: ")
    assert f"{job.name}-node-0-0" in st.message


def test_reattach_by_name_and_api_errors(trainer: FakeTrainerAPI) -> None:
    from firm.launch.backend import JobError
    from firm.launch.trainjob import TrainJobBackend

    job = _tiny()
    trainer.trainjob_scripts[job.name] = ["created", "running"]
    TrainJobBackend().submit(job)
    # a new client (a restarted launcher step) finds the running job by its name, and refuses to duplicate it
    again = TrainJobBackend()
    assert again.status(job.name).phase == "Running"
    with pytest.raises(JobError, match="already exists \\(Running\\)"):
        again.submit(job)
    # a runtime that is not installed, a namespace without permission
    with pytest.raises(JobError, match="ClusterTrainingRuntime not found"):
        TrainJobBackend(runtime="torch-missing").submit(
            _job(SPECS / "critic-sft-tiny-cpu.yaml", overrides=["name=other"])
        )
    trainer.forbidden.add("firm")
    with pytest.raises(JobError, match=r"forbidden: .*trainjobs"):
        TrainJobBackend().status(job.name)


def test_auto_picks_what_the_cluster_has(trainer: FakeTrainerAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    from firm.config import get_settings
    from firm.launch.backend import JobError
    from firm.launch.backends import get_backend, resolve_backend_name

    with pytest.raises(JobError, match="neither Kubeflow Trainer v2"):
        resolve_backend_name("auto")
    add_crd(trainer, "pytorchjobs.kubeflow.org")
    assert resolve_backend_name("auto") == "pytorchjob"
    add_crd(trainer, "trainjobs.trainer.kubeflow.org")
    assert resolve_backend_name("auto") == "trainjob"  # Trainer v2 first
    monkeypatch.setenv("FIRM_CLUSTER__JOB_BACKEND", "auto")
    get_settings(fresh=True)
    assert get_backend().name == "trainjob"


def test_cli_submit_status_logs_cancel_with_trainjob(trainer: FakeTrainerAPI, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    spec = str(SPECS / "critic-sft-tiny-cpu.yaml")
    trainer.trainjob_scripts["critic-sft-tiny-cpu"] = ["created", "running", "complete"]

    def firmctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "firm.cli.main", "job", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    rendered = firmctl("render", "--config", spec, "--backend", "trainjob")
    assert rendered.returncode == 0, rendered.stderr
    validate_trainjob(yaml.safe_load(rendered.stdout))
    sub = firmctl("submit", "--config", spec, "--backend", "trainjob")
    assert sub.returncode == 0, sub.stderr
    assert json.loads(sub.stdout)["backend"] == "trainjob"
    st = firmctl("status", "critic-sft-tiny-cpu", "--backend", "trainjob")
    assert st.returncode == 0 and json.loads(st.stdout)["phase"] == "Succeeded", st.stderr
    logs = firmctl("logs", "critic-sft-tiny-cpu", "--backend", "trainjob")
    assert logs.returncode == 0 and "log of critic-sft-tiny-cpu-node-0-0" in logs.stdout, logs.stderr
    bad = firmctl("status", "x", "--backend", "trainjobs")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: --backend must be")
    cancel = firmctl("cancel", "critic-sft-tiny-cpu", "--backend", "trainjob")
    assert cancel.returncode == 0 and json.loads(cancel.stdout)["phase"] == "Cancelled", cancel.stderr


if __name__ == "__main__":  # regenerate k8s/trainjobs/
    EXAMPLES.mkdir(exist_ok=True)
    for old in EXAMPLES.glob("*.yaml"):
        old.unlink()
    for p in SHIPPED:
        (EXAMPLES / p.name).write_text(_example(p))
        print(f"k8s/trainjobs/{p.name}")
