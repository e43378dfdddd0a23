"""`LocalBackend`: the same job specs on this machine — real torchrun/gloo processes, detached from the caller,
controlled across CLI calls: run to the end, fail with the worker's error, cancel mid-run, resubmit and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firm.launch.local_backend import LocalBackend
from firm.launch.spec import load_job_spec, resolve_job
from tests.launch.conftest import REPO, SPECS

TINY = SPECS / "critic-sft-tiny-cpu.yaml"


def _firmctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "job", *args], capture_output=True, text=True, cwd=cwd,
        env=dict(os.environ), check=False, timeout=600,
    )  # fmt: skip


def _procs_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (every process of a job carries its name)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z" and int(entry.name) != os.getpid():
            out.append(int(entry.name))
    return out


@pytest.mark.slow
def test_local_nodes_get_the_environment_a_pytorchjob_pod_gets(tmp_path: Path) -> None:
    """2 nodes x 2 processes on one machine: each node is started like a PyTorchJob pod (PET_* topology), torchrun
    turns that into 4 ranks that reach each other over gloo; the two ranks of a node share its log line by line."""
    echo = tmp_path / "echo"
    echo.mkdir()
    spec = tmp_path / "echo.yaml"
    spec.write_text(
        "name: echo-env\nentrypoint: tests.launch._echo_env\nrecipe: unused.yaml\npool: cpu\nnodes: 2\n"
        f"nproc_per_node: 2\nenv:\n  ECHO_DIR: {echo}\n  PYTHONPATH: {REPO}\n"
    )
    backend = LocalBackend()
    job = resolve_job(load_job_spec(spec), "local")
    backend.submit(job)
    st = backend.wait("echo-env", timeout=180, poll=0.5)
    assert st.phase == "Succeeded", st.message
    records = [json.loads(p.read_text()) for p in sorted(echo.glob("rank-*.json"))]
    assert sorted(int(r["RANK"]) for r in records) == [0, 1, 2, 3]
    assert {r["WORLD_SIZE"] for r in records} == {"4"} and {r["sum"] for r in records} == {4}
    assert sorted((r["GROUP_RANK"], r["LOCAL_RANK"]) for r in records) == [
        ("0", "0"),
        ("0", "1"),
        ("1", "0"),
        ("1", "1"),
    ]
    assert {r["PET_NNODES"] for r in records} == {"2"} and {r["MASTER_ADDR"] for r in records} == {
        "127.0.0.1"
    }
    assert {r["FIRM_JOB_NAME"] for r in records} == {"echo-env"}
    assert all(r["argv"][:4] == ["--config", "unused.yaml", "--resume", "auto"] for r in records)
    master = list(backend.logs("echo-env"))
    worker = list(backend.logs("echo-env", "worker", 0))
    assert "rank 0 of 4 done" in master and "rank 2 of 4 done" in worker and "rank 0 of 4 done" not in worker
    # two ranks share each node's log: their lines arrive whole, never one inside the other
    done = [ln for ln in master + worker if "done" in ln]
    assert sorted(done) == [f"rank {r} of 4 done" for r in range(4)], done


def test_torchrun_makes_no_log_tree_unless_asked_for_one(monkeypatch) -> None:
    """Every local run and every pod starts torchrun through `firm.launch.torchrun_quiet`, which tells it to make no
    `torchelastic_*` log tree in the temporary directory (nothing would be written there; the 2-process RL CLI test
    checks the directory after a real run). A log directory or files asked for are kept."""
    from torch.distributed.run import parse_args

    from firm.launch.torchrun_quiet import no_log_files

    monkeypatch.delenv("PET_LOG_DIR", raising=False)

    def log_dir(*argv: str) -> str | None:
        args = parse_args([*argv, "--nproc_per_node", "2", "-m", "x"])
        no_log_files(args)
        return args.log_dir

    assert log_dir() == os.devnull
    assert log_dir("--log-dir", "/var/log/elastic") == "/var/log/elastic"
    # output files asked for: torchrun's own log tree
    assert log_dir("--redirects", "3") is None and log_dir("--tee", "3") is None
    monkeypatch.setenv("PET_LOG_DIR", "/from/the/pod")
    assert log_dir() == "/from/the/pod"


@pytest.mark.slow
def test_tiny_spec_runs_end_to_end_through_the_cli(job_cwd: Path) -> None:
    sub = _firmctl(
        "submit", "--config", str(TINY), "--backend", "local", "--wait", "recipe.max_steps=6", cwd=job_cwd
    )
    assert sub.returncode == 0, sub.stderr
    st = json.loads(sub.stdout)
    assert st["phase"] == "Succeeded" and st["exit_code"] == 0
    status = json.loads(_firmctl("status", "critic-sft-tiny-cpu", "--backend", "local", cwd=job_cwd).stdout)
    assert status["phase"] == "Succeeded"
    logs = _firmctl("logs", "critic-sft-tiny-cpu", "--backend", "local", cwd=job_cwd).stdout.splitlines()
    assert any("world 2, global batch 8" in ln for ln in logs), logs[-10:]
    result = json.loads(next(ln for ln in reversed(logs) if ln.startswith("{")))  # rank 0's summary
    assert result["steps"] == 6 and result["resumed_from"] is None
    prefix = st["checkpoint_uri"]
    assert result["checkpoints"][-1] == f"{prefix}/checkpoints/step-6"
    from firm.storage import latest, read_manifest

    assert latest(f"{prefix}/checkpoints") == f"{prefix}/checkpoints/step-6"
    assert read_manifest(f"{prefix}/export").files  # the exported critic is published next to the checkpoints
    listed = _firmctl("list", "--backend", "local", cwd=job_cwd)
    assert listed.stdout.split()[:2] == ["critic-sft-tiny-cpu", "Succeeded"]
    again = _firmctl("submit", "--config", str(TINY), "--backend", "local", cwd=job_cwd)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"error: job critic-sft-tiny-cpu already finished successfully ({Path(os.environ['FIRM_HOME']) / 'jobs' / 'critic-sft-tiny-cpu'});"
        " a finished run is never overwritten — give the job a new name (name=...) to train again"
    ]


@pytest.mark.slow
def test_cancel_mid_run_stops_everything_and_a_resubmission_resumes(job_cwd: Path) -> None:
    from firm.storage import fetch_dir, latest, open_store

    name = "tiny-cancel"
    overrides = [f"name={name}", "recipe.max_steps=100000", "recipe.checkpoint.every_n_steps=10",
                 "recipe.checkpoint.keep_last=3"]  # fmt: skip
    backend = LocalBackend()
    job = resolve_job(load_job_spec(TINY, overrides), "local")
    phases = [backend.submit(job).phase]
    ckpts = f"{job.checkpoint_uri}/checkpoints"
    deadline = time.monotonic() + 240
    while latest(ckpts) is None:
        assert time.monotonic() < deadline, list(backend.logs(name))[-20:]
        phases.append(backend.status(name).phase)
        assert phases[-1] in ("Pending", "Running"), backend.status(name).message
        time.sleep(0.3)
    assert "Running" in phases
    assert _procs_mentioning(name), "the job's processes should be running"

    out = _firmctl("cancel", name, "--backend", "local", cwd=job_cwd)  # another process controls the job
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["phase"] == "Cancelled"
    assert backend.status(name).phase == "Cancelled"
    deadline = time.monotonic() + 10
    while _procs_mentioning(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _procs_mentioning(name) == [], "cancel must stop every process of the job"

    # every checkpoint a reader can see is complete: its manifest lists files that verify
    store, key = open_store(ckpts)
    visible = sorted(
        {
            o.key.rsplit("/", 2)[-2]
            for o in store.list(key.rstrip("/") + "/")
            if o.key.endswith("MANIFEST.json")
        }
    )
    assert visible
    for step in visible:
        fetch_dir(f"{ckpts}/{step}", job_cwd / "verify" / step)  # raises on a missing or corrupt file
    last = latest(ckpts)
    assert last is not None
    last_step = int(last.rsplit("-", 1)[1])

    resumed = resolve_job(
        load_job_spec(TINY, [*overrides[:1], f"recipe.max_steps={last_step + 10}", *overrides[2:]]), "local"
    )
    st = backend.submit(resumed)
    assert st.attempts == 2
    st = backend.wait(name, timeout=300, poll=0.5)
    assert st.phase == "Succeeded", st.message
    logs = list(backend.logs(name))
    assert any(f"from step {last_step}" in ln for ln in logs), logs[-15:]
    result = json.loads(next(ln for ln in reversed(logs) if ln.startswith("{")))
    assert result["resumed_from"] == last and result["steps"] == last_step + 10


@pytest.mark.slow
def test_a_failing_job_fails_with_the_workers_error(job_cwd: Path) -> None:
    out = _firmctl(
        "submit", "--config", str(TINY), "--backend", "local", "--wait", "name=tiny-broken",
        "recipe.data.dataset=runs/no-such-dataset", cwd=job_cwd,
    )  # fmt: skip
    assert out.returncode == 1
    st = json.loads(out.stdout)
    assert st["phase"] == "Failed" and st["exit_code"] == 1
    assert "no-such-dataset" in st["message"] and "master-0 exited with code 1: error:" in st["message"]
    assert out.stderr.strip().splitlines()[-1].startswith("error: job tiny-broken failed: master-0 exited")


def test_local_backend_refuses_gpu_pools_on_a_machine_without_gpus() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    from firm.launch.backend import JobError

    job = resolve_job(load_job_spec(SPECS / "rl-sd35m-nft-qma-1x8.yaml"), "local")
    with pytest.raises(JobError, match="asks for 8 GPUs per node and this machine has 0"):
        LocalBackend().submit(job)


def test_unknown_local_job_lists_the_known_ones(tmp_path: Path) -> None:
    from firm.launch.backend import JobError

    with pytest.raises(JobError, match="no local job named 'nope' \\(local jobs: none"):
        LocalBackend().status("nope")


@pytest.mark.slow
def test_run_job_cancels_a_job_that_outlives_its_timeout(job_cwd: Path) -> None:
    """What a launcher step does with `timeout_s`: the job is cancelled and the step fails, even while the job is
    silent (the log is followed on the side; the wait owns the deadline)."""
    from firm.launch.backend import JobError
    from firm.launch.runner import run_job

    spec = load_job_spec(TINY, ["name=tiny-timeout", "recipe.max_steps=100000"])
    lines: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(JobError, match="job tiny-timeout did not finish within 6 s and was cancelled"):
        run_job(spec, "local", timeout=6, on_line=lines.append, poll=0.2)
    assert time.monotonic() - t0 < 60
    assert LocalBackend().status("tiny-timeout").phase == "Cancelled"
    assert lines[0].startswith("[firm] job tiny-timeout submitted (local)")
    deadline = time.monotonic() + 10
    while _procs_mentioning("tiny-timeout") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _procs_mentioning("tiny-timeout") == []
