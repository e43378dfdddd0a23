"""Job specs → PyTorchJobs: every shipped spec renders, validates against the CRD and carries what it asked for;
bad specs fail at render time with one line naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from firm.errors import ConfigError
from firm.launch.render import build_pytorchjob, render_yaml, to_dict
from firm.launch.spec import load_job_spec, resolve_job
from tests.fixtures.crd import validate_pytorchjob
from tests.launch.conftest import REPO, SPECS

SHIPPED = sorted(SPECS.glob("*.yaml"))


def _render(path: Path, overrides: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    job = resolve_job(load_job_spec(path, overrides), "pytorchjob")
    return job, to_dict(build_pytorchjob(job, "firm"))


def _containers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rt: r["template"] for rt, r in obj["spec"]["pytorchReplicaSpecs"].items()}


def test_the_shipped_specs_are_the_ones_the_issue_names() -> None:
    assert {p.name for p in SHIPPED} == {
        "critic-sft-tiny-cpu.yaml",
        "critic-sft-qwen3vl-8b-1x8.yaml",
        "critic-sft-qwen3vl-8b-2x8.yaml",
        "rl-qwen-edit-2509-nft-cme-2x8.yaml",
        "rl-sd35m-nft-qma-1x8.yaml",
        "rl-flux-kontext-nft-cme-1x8.yaml",
        "rl-flux-2-klein-nft-qma-1x8.yaml",
        "rl-qwen-image-nft-qma-1x8.yaml",
        "rl-z-image-turbo-nft-qma-1x8.yaml",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_spec_renders_to_a_valid_pytorchjob_carrying_the_spec(path: Path) -> None:
    job, obj = _render(path)
    validate_pytorchjob(obj)
    spec, pool = job.spec, job.pool
    replicas = obj["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {"replicas": 0})["replicas"] == spec.nodes - 1
    assert obj["spec"]["nprocPerNode"] == str(job.nproc_per_node)
    assert obj["metadata"]["annotations"]["firm.dev/world-size"] == str(spec.nodes * job.nproc_per_node)
    assert obj["spec"]["runPolicy"]["backoffLimit"] == spec.backoff_limit
    for template in _containers(obj).values():
        pod = template["spec"]
        (c,) = pod["containers"]
        assert c["name"] == "pytorch" and c["image"] == job.image and ":" in c["image"]
        # shm: a memory-backed emptyDir with the spec's size, mounted at /dev/shm
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert vols[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": spec.shm_size}
        # GPUs: requests = limits = GPUs per node of the pool; pool selector and tolerations
        gpu = pool.gpu_resource
        if pool.gpus_per_node:
            assert c["resources"]["limits"][gpu] == c["resources"]["requests"][gpu] == str(pool.gpus_per_node)
            # the default GPU pool selects no node labels (stock clusters lack the GPU operator's): its GPU
            # request places the pod; a pool with labels pins them
            assert pod.get("nodeSelector", {}) == pool.selector()
            assert pod["tolerations"] == [t.to_k8s() for t in pool.tolerations]
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["NCCL_DEBUG"] == "WARN" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        else:
            assert gpu not in (c["resources"].get("limits") or {})
            assert "nodeSelector" not in pod
        # credentials only as secretKeyRef, never as values
        secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
        assert secret_env["FIRM_S3_ACCESS_KEY"] == {"name": "firm-object-store", "key": "access-key"}
        assert secret_env["FIRM_S3_SECRET_KEY"]["name"] == "firm-object-store"
        assert ("HF_TOKEN" in secret_env) == (spec.secrets.hf_token != "none")
        assert c["envFrom"] == [{"configMapRef": {"name": "firm-settings", "optional": True}}]
        # preemption-safe: --resume auto and this run's own checkpoint prefix
        cmd = c["command"]
        assert cmd[:5] == ["python", "-m", "firm.launch.torchrun_quiet", "-m", job.module]
        assert cmd[cmd.index("--resume") + 1] == "auto"
        prefix = f"s3://firm-checkpoints/{spec.name}"
        key = "checkpoint.uri" if spec.entrypoint == "sft" else "output_uri"
        want = f"{prefix}/checkpoints" if spec.entrypoint == "sft" else prefix
        assert f"{key}={want}" in cmd
        # hardened pod
        sc = c["securityContext"]
        assert (
            sc["capabilities"]["drop"] == ["ALL"]
            and sc["runAsNonRoot"]
            and not sc["allowPrivilegeEscalation"]
        )
        assert sc["readOnlyRootFilesystem"] and pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert template["spec"]["containers"][0]["ports"][0]["name"] == "pytorchjob-port"


def test_multi_node_zero3_spec_keeps_the_paper_global_batch_and_gangs() -> None:
    job, obj = _render(SPECS / "critic-sft-qwen3vl-8b-2x8.yaml")
    assert job.world_size == 16
    cmd = obj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    assert {"dist.strategy=deepspeed", "dist.zero_stage=3", "batch.grad_accum=1"} <= set(cmd)
    assert obj["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2, "queue": "firm-training"}
    assert obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["schedulerName"] == "volcano"


def test_elastic_spec_renders_workers_only_with_an_elastic_policy() -> None:
    _, obj = _render(
        SPECS / "rl-sd35m-nft-qma-1x8.yaml",
        ["nodes=2", "elastic.min_nodes=1", "elastic.max_nodes=3", "elastic.max_restarts=5"],
    )
    validate_pytorchjob(obj)
    assert set(obj["spec"]["pytorchReplicaSpecs"]) == {"Worker"}
    assert obj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert obj["spec"]["elasticPolicy"] == {
        "maxReplicas": 3,
        "maxRestarts": 5,
        "minReplicas": 1,
        "rdzvBackend": "c10d",
    }


def test_a_local_recipe_file_travels_through_the_object_store(tmp_path: Path) -> None:
    from firm.recipes import recipe_path

    local = tmp_path / "my_recipe.yaml"
    local.write_text(recipe_path("rl/sd35m_nft_qma").read_text())
    job, obj = _render(SPECS / "rl-sd35m-nft-qma-1x8.yaml", [f"recipe={local}"])
    assert job.upload == (str(local), "s3://firm-checkpoints/rl-sd35m-nft-qma-1x8/job/recipe.yaml")
    cmd = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--config") + 1] == job.upload[1]


def test_node_pools_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from firm.config import get_settings

    pools = (
        '{"a100": {"node_selector": {"pool": "a100"}, "gpus_per_node": 4, "tolerations": '
        '[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}], '
        '"gpu_resource": "nvidia.com/gpu", "accelerator_label": "gpu-type", "accelerator_type": "a100-40gb"}}'
    )
    monkeypatch.setenv("FIRM_CLUSTER__NODE_POOLS", pools)
    monkeypatch.setenv("FIRM_CLUSTER__TRAINER_IMAGE", "registry.example.com/ml/firm-trainer:1.2.3")
    get_settings(fresh=True)
    job, obj = _render(SPECS / "rl-sd35m-nft-qma-1x8.yaml", ["pool=a100", "nodes=2"])
    pod = obj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100", "gpu-type": "a100-40gb"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    ]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert pod["containers"][0]["image"] == "registry.example.com/ml/firm-trainer:1.2.3"
    assert job.world_size == 8


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        (["name=Critic_SFT"], "name", "DNS-1123"),
        (["image=ghcr.io/firm-platform/firm-trainer"], "image", "tag or a digest"),
        (["image=ghcr.io/firm-platform/firm-trainer:latest"], "image", "latest"),
        (["gpus_per_node=16"], "gpus_per_node", "have 8"),
        (["pool=tpu-v5"], "pool", "unknown node pool"),
        (["nproc_per_node=4"], "nproc_per_node", "one process per GPU"),
        (["nodes=0"], "nodes", "greater than or equal to 1"),
        (["nodes=3"], "nodes", "not divisible by the world size 24"),
        (["secrets.object_store=none"], "secrets.object_store", "names no Secret"),
        (["secrets.object_store="], "secrets.object_store", "Secret name"),
        (["recipe.optim.learning_rate=1e-5"], "overrides", "unknown config key 'optim.learning_rate'"),
        (["recipe=critic/nope"], "recipe", "no config file or shipped recipe"),
        (["entrypoint=not a module"], "entrypoint", "dotted Python module"),
        (["shm_size=lots"], "shm_size", "quantity"),
        (["colour=blue"], "colour", "unknown config key"),
        (["elastic.min_nodes=2", "elastic.max_nodes=1"], "elastic", "below min_nodes"),
    ],
)
def test_bad_specs_fail_at_render_time_naming_the_field(
    overrides: list[str], field: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _render(SPECS / "critic-sft-qwen3vl-8b-1x8.yaml", overrides)
    msg = str(info.value)
    assert field in msg and fragment in msg, msg
    assert "\n" not in msg


def test_cli_render_prints_the_manifest_and_bad_input_prints_one_error_line() -> None:
    spec = SPECS / "critic-sft-qwen3vl-8b-1x8.yaml"
    ok = subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "job", "render", "--config", str(spec), "--namespace", "ml"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    obj = yaml.safe_load(ok.stdout)
    validate_pytorchjob(obj)
    job = resolve_job(load_job_spec(spec), "pytorchjob")
    assert ok.stdout == render_yaml(job, "ml") and obj["metadata"]["namespace"] == "ml"
    bad = subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "job", "render", "--config", str(spec), "nproc_per_node=3"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: job spec field 'nproc_per_node'"), bad.stderr


def test_recipe_headers_point_at_their_cluster_spec() -> None:
    from firm.recipes import recipe_path

    for path in SHIPPED:
        spec = load_job_spec(path)
        header = recipe_path(spec.recipe).read_text().split("\n\n", 1)[0]
        if spec.name.endswith("2x8") and spec.entrypoint == "sft":
            continue  # the 1x8 spec is the recipe's cluster line; 2x8 is its multi-node variant
        assert f"k8s/jobs/{path.name}" in header, f"{spec.recipe} header does not name {path.name}"


def test_pipeline_step_jobs_get_valid_names_from_any_run_id() -> None:
    from firm.launch.spec import step_job_spec

    uuid = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"  # a KFP run id on a cluster
    spec = step_job_spec("sft", uuid, recipe="critic/tiny_cpu", overrides=[], pool="cpu", nodes=1,
                         nproc_per_node=0, image="")  # fmt: skip
    assert spec.name == "firm-sft-3f2504e0-4f89-11d3-9a0c-0305e82c3301"[:45].strip("-")
    assert len(spec.name) <= 45 and spec.nproc_per_node is None and spec.image is None
    with pytest.raises(ConfigError, match="job spec of step firm-rl-x: field 'nodes'"):
        step_job_spec("rl", "x", recipe="rl/tiny_sd3_nft", overrides=[], pool="cpu", nodes=0, nproc_per_node=0,
                      image="")  # fmt: skip


def _gang_render(
    cluster_gang: str | None, overrides: list[str], spec: str = "critic-sft-qwen3vl-8b-1x8.yaml"
):
    from firm.config import get_settings

    cluster = get_settings().cluster.model_copy(update={"gang_scheduler": cluster_gang})
    job = resolve_job(load_job_spec(SPECS / spec, overrides), "pytorchjob", cluster)
    obj = to_dict(build_pytorchjob(job, "firm"))
    validate_pytorchjob(obj)
    schedulers = {
        r["template"]["spec"].get("schedulerName") for r in obj["spec"]["pytorchReplicaSpecs"].values()
    }
    return obj["spec"]["runPolicy"].get("schedulingPolicy"), schedulers


@pytest.mark.parametrize(
    ("cluster_gang", "overrides", "policy", "scheduler"),
    [
        # the cluster setting (the chart's training.gangScheduling) gang-schedules every job by default
        ("scheduler-plugins-scheduler", [], {"minAvailable": 1}, "scheduler-plugins-scheduler"),
        # a spec's gang: overrides it field by field, or opts out
        ("volcano", ["gang.queue=q1"], {"minAvailable": 1, "queue": "q1"}, "volcano"),
        (
            "volcano",
            ["gang.scheduler_name=scheduler-plugins-scheduler"],
            {"minAvailable": 1},
            "scheduler-plugins-scheduler",
        ),
        ("volcano", ["gang.enabled=false"], None, None),
        # without the cluster setting only a spec's gang: asks for it (volcano unless it names another)
        (None, [], None, None),
        (None, ["gang.queue=q1"], {"minAvailable": 1, "queue": "q1"}, "volcano"),
    ],
    ids=[
        "cluster-default",
        "spec-queue",
        "spec-scheduler",
        "spec-opts-out",
        "none",
        "spec-only",
    ],
)
def test_gang_scheduling_the_cluster_setting_is_the_default_and_the_spec_overrides_it(
    cluster_gang: str | None, overrides: list[str], policy: dict[str, Any] | None, scheduler: str | None
) -> None:
    assert _gang_render(cluster_gang, overrides) == (policy, {scheduler})


def test_a_multi_node_specs_own_gang_wins_over_the_cluster_setting() -> None:
    # k8s/jobs/critic-sft-qwen3vl-8b-2x8.yaml: gang {scheduler_name: volcano, queue: firm-training}, 2 nodes
    policy, schedulers = _gang_render("scheduler-plugins-scheduler", [], "critic-sft-qwen3vl-8b-2x8.yaml")
    assert policy == {"minAvailable": 2, "queue": "firm-training"} and schedulers == {"volcano"}


def test_gang_scheduler_setting_loads_from_the_environment_and_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chart writes FIRM_CLUSTER__GANG_SCHEDULER; a pod starting with it must load its settings."""
    from firm.config import get_settings

    monkeypatch.setenv("FIRM_CLUSTER__GANG_SCHEDULER", "volcano")
    assert get_settings(fresh=True).cluster.gang_scheduler == "volcano"
    job = resolve_job(load_job_spec(SPECS / "rl-sd35m-nft-qma-1x8.yaml"), "pytorchjob")
    obj = to_dict(build_pytorchjob(job, "firm"))
    assert obj["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 1}
    assert obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["schedulerName"] == "volcano"
    monkeypatch.setenv("FIRM_CLUSTER__GANG_SCHEDULER", "Volcano!")
    with pytest.raises(ConfigError) as info:
        get_settings(fresh=True)
    msg = str(info.value)
    assert "FIRM_CLUSTER__GANG_SCHEDULER" in msg and "not a valid Kubernetes name" in msg and "\n" not in msg
    monkeypatch.delenv("FIRM_CLUSTER__GANG_SCHEDULER")


def test_trainjobs_leave_gang_scheduling_to_their_runtime() -> None:
    from firm.config import get_settings
    from firm.launch.trainjob_render import trainjob_dict

    cluster = get_settings().cluster.model_copy(update={"gang_scheduler": "volcano"})
    job = resolve_job(load_job_spec(SPECS / "critic-sft-qwen3vl-8b-2x8.yaml"), "trainjob", cluster)
    assert (
        job.gang is not None
    )  # resolved, but a TrainJob cannot carry it (the runtime's podGroupPolicy does)
    text = yaml.safe_dump(trainjob_dict(job, "firm"))
    assert "schedulerName" not in text and "schedulingPolicy" not in text


@pytest.mark.parametrize(
    "content", ["", "\n", "# only a comment\n", "---\n"], ids=["empty", "newline", "comment", "doc"]
)
def test_an_empty_job_spec_file_says_empty_file(tmp_path: Path, content: str) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_job_spec(spec)
    msg = str(info.value)
    assert msg.startswith(f"job spec {spec}: empty file") and "missing" not in msg, msg
    bad = subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "job", "render", "--config", str(spec)],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [f"error: {msg}"], bad.stderr
