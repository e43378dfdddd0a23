"""`python -m firm.launch.supervisor JOB_DIR`: runs one local job detached from the CLI that submitted it.

The local backend's stand-in for the Training Operator: for each node of the job it starts the job's container
command (`python -m firm.launch.torchrun_quiet -m <module> ...`) with the environment a PyTorchJob pod gets —
`MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`, `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`,
`PET_MASTER_ADDR`, `PET_MASTER_PORT` plus the job's own env — writes each node's output to
`JOB_DIR/logs/<replica>-<index>.log` (master-0 is rank 0), and keeps `JOB_DIR/state.json` current.

It becomes a child subreaper (Linux), so training processes that torchrun starts in their own sessions still count
as its descendants: on SIGTERM (`firmctl job cancel`) it stops torchrun, waits a grace period, then kills whatever
is left of the tree and records `Cancelled`. A node that fails stops the others (the job fails, like a PyTorchJob
whose restarts are exhausted).

`--detach` starts the supervisor in a new session and returns at once, so the submitting CLI can exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from firm.processes import descendants

GRACE_S = 30.0
POLL_S = 0.2


def _set_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


class Supervisor:
    def __init__(self, job_dir: Path) -> None:
        from firm.launch.local_backend import read_state, write_state
        from firm.launch.spec import ResolvedJob

        self.dir = job_dir
        self.job = ResolvedJob.model_validate_json((job_dir / "job.json").read_text())
        self.state = read_state(job_dir)
        self._write_state = write_state
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.cancelled = False

    def save(self, **changes: object) -> None:
        self.state.update(changes)
        self._write_state(self.dir, self.state)

    def node_env(self, node_rank: int, port: int) -> dict[str, str]:
        job = self.job
        nodes = job.spec.nodes
        env = {**os.environ, **job.env}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, job.world_size))))
        env |= {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(job.world_size),
            "RANK": str(node_rank),
            "PET_NNODES": str(nodes),
            "PET_NPROC_PER_NODE": str(job.nproc_per_node),
            "PET_NODE_RANK": str(node_rank),
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port),
        }
        return env

    def start(self) -> None:
        from firm.processes import free_port

        port = free_port()
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        cmd = self.job.command(sys.executable)
        for node_rank in range(self.job.spec.nodes):
            replica = "master-0" if node_rank == 0 else f"worker-{node_rank - 1}"
            with open(logs / f"{replica}.log", "ab") as log:
                proc = subprocess.Popen(
                    cmd,
                    cwd=self.state.get("cwd") or None,
                    env=self.node_env(node_rank, port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append((replica, proc))
        self.save(
            phase="Running",
            started=time.time(),
            supervisor_pid=os.getpid(),
            node_pids={r: p.pid for r, p in self.procs},
        )

    def on_signal(self, signum: int, _frame: object) -> None:
        if not self.cancelled:
            self.cancelled = True
            _signal_all([p.pid for _, p in self.procs], signal.SIGTERM)

    def stop_all(self, grace: float) -> None:
        """SIGTERM the nodes (torchrun forwards it to its workers), then SIGKILL the whole tree after `grace`."""
        _signal_all([p.pid for _, p in self.procs if p.poll() is None], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (
            any(p.poll() is None for _, p in self.procs) or descendants(os.getpid())
        ):
            time.sleep(POLL_S)
            self._reap()
        _signal_all(descendants(os.getpid()), signal.SIGKILL)
        for _, p in self.procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        self._reap()

    @staticmethod
    def _reap() -> None:
        """Collect exit statuses of adopted orphans (we are their subreaper)."""
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        try:
            self.start()
        except Exception as exc:  # e.g. the working directory vanished
            self.save(phase="Failed", finished=time.time(), message=f"could not start: {exc}", exit_code=1)
            return 1
        failed: tuple[str, int] | None = None
        while True:
            codes = {r: p.poll() for r, p in self.procs}
            bad = [(r, c) for r, c in codes.items() if c not in (None, 0)]
            if bad and failed is None and not self.cancelled:
                failed = bad[0]
                self.stop_all(GRACE_S)  # one node failed: the others cannot finish
                break
            if self.cancelled:
                self.stop_all(GRACE_S)
                break
            if all(c is not None for c in codes.values()):
                break
            time.sleep(POLL_S)
        _signal_all(descendants(os.getpid()), signal.SIGKILL)  # nothing outlives the job
        self._reap()
        if self.cancelled:
            self.save(phase="Cancelled", finished=time.time(), message="cancelled", exit_code=None)
            return 0
        if failed is not None:
            replica, code = failed
            self.save(
                phase="Failed",
                finished=time.time(),
                exit_code=code,
                message=f"{replica} exited with code {code}: {_last_error(self.dir / 'logs' / f'{replica}.log')}",
            )
            return 0
        self.save(phase="Succeeded", finished=time.time(), exit_code=0, message="")
        return 0


def _last_error(log: Path) -> str:
    """The last `error: ...` line of a log (what FIRM's entrypoints print), else its last non-empty line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith("error:") and "its error is above" not in ln]
    return (errors or lines or ["(empty log)"])[-1][:500]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    detach = "--detach" in args
    args = [a for a in args if a != "--detach"]
    if len(args) != 1:
        print("usage: python -m firm.launch.supervisor [--detach] JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    if detach:
        with open(job_dir / "supervisor.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "firm.launch.supervisor", str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (job_dir / "supervisor.pid").write_text(str(proc.pid))
        return 0
    _set_subreaper()
    return Supervisor(job_dir).run()


if __name__ == "__main__":
    sys.exit(main())
