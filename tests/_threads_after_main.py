"""`python -m tests._threads_after_main <module> [args...]`: runs `<module>.main(args)` as that module's own entry point
would, then records which of this process's threads still run (their names, from /proc/self/task) in
$THREADS_DIR/rank-<RANK>.json, and exits with main's code. A rank whose process group ended with the run has only its
main thread left; gloo's backend threads are named `pt_gloo_runloop` and `gloo_tcp_loop`."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

GLOO_THREADS = {"pt_gloo_runloop", "gloo_tcp_loop"}


def thread_names() -> list[str]:
    names = []
    for task in sorted(os.listdir("/proc/self/task")):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
    return names


def main() -> int:
    module, args = sys.argv[1], sys.argv[2:]
    code = importlib.import_module(module).main(args)
    rank = os.environ.get("RANK", "0")
    Path(os.environ["THREADS_DIR"], f"rank-{rank}.json").write_text(json.dumps(thread_names()))
    return code


def run_ranks(
    module: str, args: list[str], threads_dir: Path, nproc: int = 2, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run `module` on `nproc` local torchrun ranks through this wrapper (`env`: the processes' environment, by
    default this one's): the finished process and the threads each rank still ran after `main` returned."""
    from firm.launch.local import torchrun_command

    repo = Path(__file__).resolve().parents[1]
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(repo), "THREADS_DIR": str(threads_dir)}
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    threads_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        torchrun_command("tests._threads_after_main", [module, *args], nproc),
        env=env, capture_output=True, text=True, timeout=300, start_new_session=True,
    )  # fmt: skip
    return proc, [json.loads(p.read_text()) for p in sorted(threads_dir.glob("rank-*.json"))]


def assert_no_backend_threads(ranks: list[list[str]], nproc: int) -> None:
    """Every rank recorded its threads, and none of them is one of gloo's."""
    assert len(ranks) == nproc, ranks
    for names in ranks:
        assert not GLOO_THREADS & set(names), names


if __name__ == "__main__":
    sys.exit(main())
