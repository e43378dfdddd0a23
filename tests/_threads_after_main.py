"""Which threads a distributed run's ranks still run once their entry point's `main` has returned.

`recording_env(threads_dir)` is an environment under which every torchrun rank a command starts (through
`firmctl ... --nproc N` or plain torchrun) records, at interpreter exit, its threads' names in
`threads_dir/rank-<RANK>.json` (tests/_rank_threads/sitecustomize.py does it; nothing in the product is involved).
A rank whose process group ended with the run has only its main thread left; gloo's backend threads are named
`pt_gloo_runloop` and `gloo_tcp_loop`. So a test that already runs a multi-rank job checks this at no extra run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

GLOO_THREADS = {"pt_gloo_runloop", "gloo_tcp_loop"}
REPO = Path(__file__).resolve().parents[1]
SITE = Path(__file__).resolve().parent / "_rank_threads"


def recording_env(threads_dir: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) for a command whose torchrun ranks record their threads at exit
    in `threads_dir`; the repository stays importable (PYTHONPATH)."""
    threads_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(REPO), *rest])
    env["THREADS_DIR"] = str(threads_dir)
    return env


def recorded_threads(threads_dir: Path) -> list[list[str]]:
    """The thread names each rank recorded, by rank."""
    files = sorted(threads_dir.glob("rank-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return [json.loads(p.read_text()) for p in files]


def run_ranks(
    module: str, args: list[str], threads_dir: Path, nproc: int = 2, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run `module` on `nproc` local torchrun ranks (`env`: the processes' environment, by default this one's): the
    finished process and the threads each rank still ran after `main` returned."""
    from firm.launch.local import torchrun_command

    env = recording_env(threads_dir, env)
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        torchrun_command(module, args, nproc),
        env=env, capture_output=True, text=True, timeout=300, start_new_session=True,
    )  # fmt: skip
    return proc, recorded_threads(threads_dir)


def assert_no_backend_threads(ranks: list[list[str]], nproc: int) -> None:
    """Every rank recorded its threads, and none of them is one of gloo's."""
    assert len(ranks) == nproc, ranks
    for names in ranks:
        assert not GLOO_THREADS & set(names), names
