"""Job limits and targets of cluster jobs: the jobs pipeline launcher steps submit get their node pool's
`job_resources` (issue 26, A3), a pool whose /dev/shm exceeds its memory is refused when the settings load, and
`firmctl job submit` refuses a non-empty s3:// checkpoint prefix of a cluster job when this machine reaches that
object store (issue 30) — against moto's S3 server and the fake API server (no cluster runs here)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from firm.cli.main import app
from firm.errors import ConfigError
from firm.launch.render import pod_template, to_dict
from firm.launch.spec import resolve_job, step_job_spec
from firm.storage.targets import TARGET_EXISTS
from tests.launch.conftest import SPECS
from tests.launch.k8s_api import FakeKubeAPI

SPEC = SPECS / "rl-sd35m-nft-qma-1x8.yaml"


@pytest.mark.parametrize(
    ("pool", "recipe", "want"),
    [
        ("cpu", "critic/tiny_cpu", ("4", "8Gi", "1Gi")),
        ("gpu-h100", "critic/qwen3vl_8b_edit_full", ("96", "900Gi", "128Gi")),
    ],
)
def test_pipeline_step_jobs_get_their_pools_job_resources(
    pool: str, recipe: str, want: tuple[str, str, str]
) -> None:
    spec = step_job_spec("sft", "run-1", recipe=recipe, overrides=[], pool=pool, nodes=1, nproc_per_node=0,
                         image="")  # fmt: skip
    pod = to_dict(pod_template(resolve_job(spec, "pytorchjob")))["spec"]
    res = pod["containers"][0]["resources"]
    cpu, memory, shm = want
    assert {k: res["requests"][k] for k in ("cpu", "memory")} == {"cpu": cpu, "memory": memory}
    assert {k: res["limits"][k] for k in ("cpu", "memory")} == {"cpu": cpu, "memory": memory}
    (dshm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": shm}


def test_a_pool_whose_shm_exceeds_its_memory_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from firm.config import get_settings

    monkeypatch.setenv(
        "FIRM_CLUSTER__NODE_POOLS", '{"cpu": {"job_resources": {"memory": "8Gi", "shm_size": "16Gi"}}}'
    )
    with pytest.raises(ConfigError) as info:
        get_settings(fresh=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert "'cluster.node_pools.cpu.job_resources' (env FIRM_CLUSTER__NODE_POOLS)" in msg, msg
    assert "shm_size 16Gi exceeds job_resources.memory 8Gi" in msg and "Value error" not in msg, msg
    monkeypatch.delenv("FIRM_CLUSTER__NODE_POOLS")


# ------------------------------------------------------------------------------------------------ s3:// prefixes


def _posts(kube: FakeKubeAPI) -> list[dict[str, Any]]:
    return [b for m, p, b in kube.requests if m == "POST" and p.endswith("/pytorchjobs")]


def _submit(prefix: str, *extra: str) -> Any:
    return CliRunner().invoke(
        app,
        [
            "job",
            "submit",
            "--config",
            str(SPEC),
            "--backend",
            "pytorchjob",
            *extra,
            f"checkpoint_uri={prefix}",
        ],
    )


@pytest.fixture
def store(s3_env: dict[str, str]) -> Any:
    from firm.config import get_settings
    from firm.storage import S3Store

    s = S3Store.from_settings(s3_env["bucket"], get_settings())
    s.make_bucket()
    return s


def test_submit_refuses_a_non_empty_s3_prefix_when_the_store_is_reachable(
    kube: FakeKubeAPI, store: Any
) -> None:
    prefix = f"s3://{store.bucket}/jobs/rl-sd35m"
    store.put_bytes("jobs/rl-sd35m/checkpoints/step-10/MANIFEST.json", b'{"step": 10}')
    res = _submit(prefix)
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines() == [
        f"error: checkpoint prefix {prefix}: {TARGET_EXISTS} (or --resume to continue it)"
    ]
    assert _posts(kube) == []  # nothing started
    assert store.get_bytes("jobs/rl-sd35m/checkpoints/step-10/MANIFEST.json") == b'{"step": 10}'


def test_submit_resume_and_overwrite_of_a_reachable_s3_prefix(kube: FakeKubeAPI, store: Any) -> None:
    prefix = f"s3://{store.bucket}/jobs/rl-sd35m"
    store.put_bytes("jobs/rl-sd35m/checkpoints/step-10/MANIFEST.json", b"{}")
    resumed = _submit(prefix, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert store.exists("jobs/rl-sd35m/checkpoints/step-10/MANIFEST.json")  # continued, not cleared
    fresh = _submit(f"s3://{store.bucket}/jobs/other", "name=rl-other")
    assert fresh.exit_code == 0 and "note:" not in fresh.stderr, fresh.output  # an empty prefix: no remark
    over = _submit(prefix, "--overwrite", "name=rl-again")
    assert over.exit_code == 0, over.output
    assert list(store.list("jobs/rl-sd35m/")) == []
    assert len(_posts(kube)) == 3


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["no-credentials", "unreachable"])
def test_submit_notes_an_s3_prefix_it_cannot_check(
    kube: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    from firm.config import get_settings

    for var in ("FIRM_S3_ENDPOINT", "FIRM_S3_ACCESS_KEY", "FIRM_S3_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    if where == "unreachable":  # settings that name a store nobody answers for (e.g. no port-forward running)
        monkeypatch.setenv("FIRM_S3_ENDPOINT", f"127.0.0.1:{_closed_port()}")
        monkeypatch.setenv("FIRM_S3_SECURE", "false")
        monkeypatch.setenv("FIRM_S3_ACCESS_KEY", "k")
        monkeypatch.setenv("FIRM_S3_SECRET_KEY", "s")
    get_settings(fresh=True)
    prefix = "s3://firm-checkpoints/jobs/rl-sd35m"
    res = _submit(prefix)
    assert res.exit_code == 0, res.output
    (note,) = res.stderr.strip().splitlines()
    assert note.startswith(f"note: checkpoint prefix {prefix} not checked for earlier checkpoints: "), note
    assert ("missing S3 credentials" if where == "no-credentials" else "cannot reach") in note, note
    assert len(_posts(kube)) == 1
