"""`python -m firm.launch.torchrun_quiet [torchrun args]`: torchrun without its launcher traceback.

When a worker fails, `torch.distributed.run` ends with a Python traceback and a framed `ChildFailedError` report
after the workers' own output. FIRM workers already print their one-line `error: ...` to stderr, so this wrapper
replaces torchrun's report with one line naming the first failed rank. Everything else (arguments, rendezvous,
worker environment — including the `PET_*` variables a PyTorchJob pod gets) is torchrun's own `run`.

Each rank runs through `firm.launch.rank_main` (line-buffered stdout/stderr) instead of torchrun's `python -u`, so
ranks that share a node's log never break each other's lines.

Exit codes follow the Training Operator's `ExitCode` restart policy, which restarts a pod whose exit code is >= 128
and fails the job on 1..127 (kubeflow/training-operator v1.9, pkg/util/train/train_util.go `IsRetryableExitCode`):
1 when a worker failed by itself (a config or data error: retrying cannot help), `ALARM_EXIT_CODE` (4) when a
reward-hacking alarm stopped an RL run (`firm.rl.alarms`: status `stopped_by_alarm`), `OOM_EXIT_CODE` when a worker was
killed by the kernel's OOM killer (the container's cgroup counted an OOM kill: the same job would run out of memory
again, so it is not retried — the termination message says "out of memory: raise resources.memory"), and 128 + N
when a worker or torchrun itself was killed by signal N otherwise (preemption, `firmctl job cancel`: the pod may be
restarted and resumes from its last checkpoint; `runPolicy.backoffLimit` bounds the restarts).
"""

from __future__ import annotations

import contextlib
import os
import sys
from argparse import Namespace
from pathlib import Path

# 4, < 128 (not retried): an RL run stopped by a reward-hacking alarm, passed through as the workers' exit code
from firm.rl.alarms import ALARM_EXIT_CODE

OOM_EXIT_CODE = 3  # < 128: permanent for the ExitCode restart policy
OOM_MESSAGE = "out of memory: raise resources.memory"
TERMINATION_LOG = Path("/dev/termination-log")  # the kubelet's terminationMessagePath default
# cgroup v2 (memory.events) and v1 (memory.oom_control) counters of OOM kills in this container
_OOM_EVENTS = (Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory/memory.oom_control"))


def oom_kills(files: tuple[Path, ...] = _OOM_EVENTS) -> int:
    """How many processes the kernel's OOM killer killed in this container's cgroup (0 when unknown)."""
    for f in files:
        try:
            for line in f.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return 0


def killed_exit(rank: object, signum: int, name: str, oom: int | None = None) -> int:
    """The exit code (and the line on stderr) for a worker killed by signal `signum`."""
    if signum == 9 and (oom_kills() if oom is None else oom) > 0:
        msg = f"{OOM_MESSAGE} ({name} rank {rank} was killed by the OOM killer)"
        print(f"error: {msg}", file=sys.stderr)
        with contextlib.suppress(OSError):  # not in a pod
            TERMINATION_LOG.write_text(msg)
        return OOM_EXIT_CODE
    print(f"error: {name} rank {rank} was killed by signal {signum}", file=sys.stderr)
    return 128 + signum


def no_log_files(args: Namespace) -> None:
    """Unless told where (`--log-dir`, `PET_LOG_DIR`) or asked to redirect the workers' output to files, torchrun
    makes a `torchelastic_*` directory tree in the temporary directory for every run and leaves it there, empty (the
    workers write to the launcher's stdout and stderr, and FIRM reads no `error.json`): `os.devnull` makes none."""
    if args.log_dir is None and args.logs_specs is None and args.redirects == "0" and args.tee == "0":
        args.log_dir = os.devnull


def main(argv: list[str] | None = None) -> int:
    import logging

    # the elastic agent's own "failed (exitcode: 1) local_rank: 0" report repeats the worker's `error:` line
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv if argv is not None else sys.argv[1:])
    no_log_files(args)
    name = args.training_script
    if not args.no_python and not args.run_path:
        # `python -u [-m] ENTRY` per rank becomes `python -m firm.launch.rank_main [-m] ENTRY` (see the module doc)
        entry = ["-m", args.training_script] if args.module else [args.training_script]
        args.training_script_args = ["-m", "firm.launch.rank_main", *entry, *args.training_script_args]
        args.training_script = os.getenv("PYTHON_EXEC", sys.executable)
        args.no_python, args.module = True, False
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code < 0:  # killed by a signal
            return killed_exit(rank, -code, name)
        if code == ALARM_EXIT_CODE:  # a reward-hacking alarm stopped the run: its `error:` line is above
            return ALARM_EXIT_CODE
        print(
            f"error: {name} failed on rank {rank} (exit code {code}); its error is above",
            file=sys.stderr,
        )
        return 1
    except SignalException as exc:
        print(f"error: stopped by signal {int(exc.sigval)}; the workers were stopped", file=sys.stderr)
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
