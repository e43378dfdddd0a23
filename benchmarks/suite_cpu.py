"""Where the test suite's CPU goes, per kind of process and per test file, subprocesses included.

`make test`'s pytest command runs under a /proc sampler, so torchrun ranks, CLI calls, tritonserver and its Python
stubs count too, which `pytest --durations` (the wall time of the test that waited for them) cannot show.

    .venv/bin/python benchmarks/suite_cpu.py                           # the whole suite: as long as `make test`
    .venv/bin/python benchmarks/suite_cpu.py --top 10 -- tests/rl      # after `--`: pytest's own arguments
    .venv/bin/python benchmarks/suite_cpu.py --top-tests 40            # also a table by test

Linux only (it reads /proc). Every `--interval` seconds (0.5) it reads each process's CPU time (user + system). A
process belongs to the run when it descends from pytest or started with the run's marker variable in its environment
(launchers that detach re-parent to init but keep their environment); its test is the `PYTEST_CURRENT_TEST` it
started with. The xdist workers' own CPU — every test that runs in-process — is one row for both. A process that
lives less than one interval is missed (little CPU). pytest runs as `make test` runs it (2 xdist workers, whole
files per worker, collection order; `--workers` changes the count), with `CI=true`.

Prints the wall time, pytest's last line, the machine's busy CPU over the run (/proc/stat) and how much of it the
run's processes used (the rest is other processes and the kernel's own threads), then Markdown tables: CPU by kind
of process and by test file (and by test, with `--top-tests`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firm.processes import stat_fields  # noqa: E402 - after the repository is on sys.path

MARKER = "SUITE_CPU_RUN"  # not FIRM_*: the tests clear or check the settings' own variables
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Proc:
    pid: int
    ppid: int
    cmd: str
    test: str
    marked: bool
    cpu: float


def _start_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, start time in ticks, CPU seconds) of a live process."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / TICK


class Sampler:
    """Every process seen, keyed by (pid, start time) so a reused pid is a new process."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.seen: dict[tuple[int, int], Proc] = {}

    def scan(self) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            st = _stat(pid)
            if st is None:
                continue
            ppid, start, cpu = st
            key = (pid, start)
            if key in self.seen:
                self.seen[key].cpu = cpu
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            env = _start_env(pid)
            self.seen[key] = Proc(
                pid, ppid, cmd.strip(), env.get("PYTEST_CURRENT_TEST", ""), env.get(MARKER) == self.token, cpu
            )

    def run_processes(self, root: int) -> list[Proc]:
        """The processes of the run: `root`'s descendants (as first seen) and every marked process."""
        procs = list(self.seen.values())
        members = {root}
        changed = True
        while changed:
            changed = False
            for p in procs:
                if p.pid not in members and (p.marked or p.ppid in members):
                    members.add(p.pid)
                    changed = True
        return [p for p in procs if p.pid in members]


def _busy_ticks() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def kind(cmd: str) -> str:
    """A short name for what a process was."""
    if "exec(eval(sys.stdin.readline()))" in cmd:
        return "pytest-xdist worker (in-process tests)"
    if "triton_python_backend_stub" in cmd:
        return "Triton Python stub"
    words = cmd.split()
    if not words:
        return "(no command line)"
    exe = Path(words[0]).name
    if exe == "tritonserver":
        return "tritonserver"
    rest = words[1:]
    while rest and rest[0] in ("-u", "-B", "-I", "-s", "-E"):
        rest = rest[1:]
    if rest[:1] == ["-m"] and len(rest) > 1:
        module = rest[1]
        if module == "firm.launch.rank_main" and len(rest) > 3:
            return f"local-job rank ({rest[3]})"
        if module == "firm.cli.main":
            return "firmctl " + " ".join(rest[2:3])
        if module == "kfp.dsl.executor_main":
            return "KFP local-runner step"
        return f"python -m {module}"
    script = Path(rest[0]).name if rest else ""
    if exe == "firmctl":  # the console script, run directly
        return "firmctl " + " ".join(rest[:1])
    if script == "firmctl" or (script == "main.py" and "firm/cli" in rest[0]):  # through python
        return "firmctl " + " ".join(rest[1:2])
    if exe.startswith("python"):
        return f"python {script}".strip()
    return exe


OUTSIDE_A_TEST = "(outside a test: session fixtures)"


def owning_test(p: Proc, main_pid: int) -> str | None:
    """The test a subprocess ran for: pytest's node id without its phase, so a test's setup, call and teardown
    count together (`OUTSIDE_A_TEST` for session fixtures). None for pytest itself and its xdist workers, whose own
    CPU is not split by test."""
    if p.pid == main_pid or "pytest-xdist worker" in kind(p.cmd):
        return None
    return p.test.rsplit(" (", 1)[0] or OUTSIDE_A_TEST


def tally(procs: list[Proc], key: Callable[[Proc], str | None]) -> list[tuple[str, int, float]]:
    """(name, processes, CPU seconds) per `key` (None leaves a process out), most CPU first."""
    cpu: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for p in procs:
        if (k := key(p)) is not None:
            cpu[k] += p.cpu
            count[k] += 1
    return [(k, count[k], c) for k, c in cpu.most_common()]


def table(title: str, rows: list[tuple[str, int, float]], total: float) -> str:
    lines = [f"| {title} | processes | CPU s | share |", "|---|---|---|---|"]
    lines += [f"| {name} | {n} | {cpu:.1f} | {100 * cpu / total:.1f} % |" for name, n, cpu in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (make test: 2)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between two reads of /proc")
    ap.add_argument("--top", type=int, default=25, help="rows of the per-test-file table")
    ap.add_argument("--top-tests", type=int, default=0, help="rows of a per-test table (0: none)")
    ap.add_argument(
        "pytest_args", nargs="*", help="after `--`: pytest's arguments (default: the whole suite)"
    )
    args = ap.parse_args()
    if not Path("/proc/self/stat").exists():
        print("error: this benchmark reads /proc (Linux only)", file=sys.stderr)
        return 2

    token = uuid.uuid4().hex
    env = {**os.environ, MARKER: token, "CI": "true"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as `make test` (Makefile: unexport)
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(args.workers),
        "--dist", "loadfile", "--no-loadscope-reorder", *args.pytest_args,
    ]  # fmt: skip
    print(f"command: {' '.join(cmd[1:])} (CI=true)", file=sys.stderr)
    sampler = Sampler(token)
    busy0, t0 = _busy_ticks(), time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            sampler.scan()
            time.sleep(args.interval)
        sampler.scan()
        wall, busy = time.perf_counter() - t0, (_busy_ticks() - busy0) / TICK
        log.seek(0)
        out = log.read()

    procs = sampler.run_processes(proc.pid)
    total = sum(p.cpu for p in procs)
    summary = [ln for ln in out.splitlines() if re.search(r"\b(passed|failed|error)", ln)]
    cores = os.cpu_count() or 1
    print(f"pytest: {summary[-1] if summary else '(no summary line)'} (exit {proc.returncode})")
    for line in out.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            print(line)
    if proc.returncode != 0:  # the failures' tracebacks, for a suite that failed here and passes elsewhere
        print("\n".join(out.splitlines()[-200:]), file=sys.stderr)
    print(
        f"wall {wall:.0f} s; the machine's busy CPU {busy:.0f} s of {wall * cores:.0f} core-seconds ({cores} cores); "
        f"the run's {len(procs)} processes {total:.0f} s ({100 * total / max(busy, 1e-9):.0f} % of the busy CPU)\n"
    )
    main_pid = proc.pid
    by_kind = tally(procs, lambda p: "pytest (main process)" if p.pid == main_pid else kind(p.cmd))
    print(table("kind of process", by_kind, total))
    by_file = tally(procs, lambda p: (t := owning_test(p, main_pid)) and t.split("::")[0])
    print("\nSubprocesses by test file (the workers' own CPU is not split by test):\n")
    print(table("test file", by_file[: args.top], total))
    if args.top_tests:
        by_test = tally(procs, lambda p: owning_test(p, main_pid))
        print("\nSubprocesses by test (its setup, call and teardown together):\n")
        print(table("test", by_test[: args.top_tests], total))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
