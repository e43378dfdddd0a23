"""`python -m tests._threads_after_main <module> [args...]`: runs `<module>.main(args)` as that module's own entry point
would, then records which of this process's threads still run (their names, from /proc/self/task) in
$THREADS_DIR/rank-<RANK>.json, and exits with main's code. A rank whose process group ended with the run has only its
main thread left; gloo's backend threads are named `pt_gloo_runloop` and `gloo_tcp_loop`."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path


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
    module: str, args: list[str], threads_dir: Path, nproc: int = 2
) -> tuple[int, str, list[list[str]]]:
    """Run `module` on `nproc` local torchrun ranks through this wrapper: (exit code, stderr, each rank's threads)."""
    import subprocess

    from firm.launch.local import torchrun_command

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "THREADS_DIR": str(threads_dir)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    threads_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        torchrun_command("tests._threads_after_main", [module, *args], nproc),
        env=env, capture_output=True, text=True, timeout=300, start_new_session=True,
    )  # fmt: skip
    ranks = [json.loads(p.read_text()) for p in sorted(threads_dir.glob("rank-*.json"))]
    return proc.returncode, proc.stderr, ranks


if __name__ == "__main__":
    sys.exit(main())
