"""The four pipelines compile with the real KFP compiler, the checked-in IR is current, and the IR of each step
carries the Kubernetes placement the FIRM settings ask for (kfp-kubernetes, not hand-patched YAML)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPILED = REPO / "pipelines" / "compiled"
NAMES = ("firm", "critic", "rl", "bench")


def _compile(out: Path, extra_env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Compile in a fresh interpreter with no FIRM_* settings but `extra_env` (the IR depends on the settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRM_")}
    env |= {"FIRM_HOME": str(out / "home"), **(extra_env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "pipeline", "compile", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {n: yaml.safe_load_all((out / f"{n}.yaml").read_text()) for n in NAMES}  # type: ignore[misc]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    _compile(out)
    return out


def _docs(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    spec, platform = list(yaml.safe_load_all(path.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("name", NAMES)
def test_checked_in_pipelines_are_current(compiled: Path, name: str) -> None:
    fresh = (compiled / f"{name}.yaml").read_text()
    shipped = (COMPILED / f"{name}.yaml").read_text()
    assert fresh == shipped, f"pipelines/compiled/{name}.yaml is stale: run 'firmctl pipeline compile'"


def test_each_pipeline_has_the_steps_of_its_dag(compiled: Path) -> None:
    want = {
        "firm": {"curate-dataset", "train-critic", "bench-critic", "export-to-triton", "deploy-reward-service",
                 "rl-train", "eval-policy", "stop-reward-service"},
        "critic": {"curate-dataset", "train-critic", "bench-critic", "export-to-triton"},
        "rl": {"rl-train", "eval-policy"},
        "bench": {"bench-critic"},
    }  # fmt: skip
    for name, steps in want.items():
        spec, _ = _docs(compiled / f"{name}.yaml")
        assert {c.removeprefix("comp-") for c in spec["components"] if not c.startswith("comp-exit")} == steps


def test_gpu_and_cpu_steps_carry_the_settings_placement(compiled: Path) -> None:
    from firm.launch.cluster import ClusterSettings

    cluster = ClusterSettings()
    gpu_pool = cluster.node_pools[cluster.pipeline_gpu_pool]
    spec, executors = _docs(compiled / "firm.yaml")
    bench = executors["exec-bench-critic"]
    # the default GPU pool pins no node labels (a stock cluster may lack them): the GPU request places the step
    assert bench.get("nodeSelector", {}).get("labels", {}) == gpu_pool.selector()
    assert [
        {k: v for k, v in t.items() if k in ("key", "operator", "effect")} for t in bench["tolerations"]
    ] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert bench["emptyDirMounts"] == [
        {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "16Gi"}
    ]
    secrets = {
        s["secretName"]: {m["secretKey"]: m["envVar"] for m in s["keyToEnv"]} for s in bench["secretAsEnv"]
    }
    assert secrets["firm-object-store"] == {
        "access-key": "FIRM_S3_ACCESS_KEY",
        "secret-key": "FIRM_S3_SECRET_KEY",
    }
    assert secrets["firm-hf-token"] == {"token": "HF_TOKEN"}
    (cm,) = bench["configMapAsEnv"]
    assert cm["configMapName"] == "firm-settings" and {"FIRM_S3_ENDPOINT", "FIRM_CLUSTER__NODE_POOLS"} <= {
        m["envVar"] for m in cm["keyToEnv"]
    }
    assert bench["podMetadata"]["labels"]["firm.dev/reward-client"] == "true"
    assert bench["activeDeadlineSeconds"] == str(6 * 3600) and bench["imagePullPolicy"] == "IfNotPresent"
    container = spec["deploymentSpec"]["executors"]["exec-bench-critic"]["container"]
    acc = container["resources"]["accelerator"]
    assert (acc["resourceType"], acc["resourceCount"]) == ("nvidia.com/gpu", "1")
    assert container["image"] == cluster.pipeline_image
    # CPU steps: the CPU pool (no selector, no GPU), but the same Secrets and settings
    curate = executors["exec-curate-dataset"]
    assert "nodeSelector" not in curate and "emptyDirMounts" not in curate and curate["secretAsEnv"]
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-curate-dataset"]["container"].get(
        "resources", {}
    )


def test_caching_is_off_for_launchers_and_the_deploy_step(compiled: Path) -> None:
    spec, _ = _docs(compiled / "firm.yaml")
    tasks = {**spec["root"]["dag"]["tasks"], **spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]}
    cached = {name: t.get("cachingOptions", {}).get("enableCache", False) for name, t in tasks.items()}
    assert cached["train-critic"] is False and cached["rl-train"] is False
    assert cached["deploy-reward-service"] is False and cached["stop-reward-service"] is False
    assert (
        cached["curate-dataset"] is True and cached["bench-critic"] is True and cached["eval-policy"] is True
    )
    # the exit handler runs when the run ends, failed or not
    assert (
        spec["root"]["dag"]["tasks"]["stop-reward-service"]["triggerPolicy"]["strategy"]
        == "ALL_UPSTREAM_TASKS_COMPLETED"
    )


def test_placement_follows_the_node_pools_of_the_settings(tmp_path: Path) -> None:
    pools = {
        "a100": {"node_selector": {"pool": "a100"}, "gpus_per_node": 4,
                 "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]},
        "small": {"node_selector": {"pool": "cpu-small"}},
    }  # fmt: skip
    _compile(
        tmp_path,
        {
            "FIRM_CLUSTER__NODE_POOLS": json.dumps(pools),
            "FIRM_CLUSTER__PIPELINE_GPU_POOL": "a100",
            "FIRM_CLUSTER__PIPELINE_CPU_POOL": "small",
            "FIRM_CLUSTER__OBJECT_STORE_SECRET": json.dumps({"name": "minio-creds", "keys": {"FIRM_S3_ACCESS_KEY": "user", "FIRM_S3_SECRET_KEY": "pass"}}),
        },
    )  # fmt: skip
    spec, executors = _docs(tmp_path / "critic.yaml")
    assert executors["exec-bench-critic"]["nodeSelector"]["labels"] == {"pool": "a100"}
    assert executors["exec-bench-critic"]["tolerations"][0]["value"] == "ml"
    assert executors["exec-curate-dataset"]["nodeSelector"]["labels"] == {"pool": "cpu-small"}
    names = {s["secretName"] for s in executors["exec-train-critic"]["secretAsEnv"]}
    assert "minio-creds" in names
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["train_pool"]["defaultValue"] == "a100"
