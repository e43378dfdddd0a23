"""`python -m firm.launch.torchrun_quiet [torchrun args]`: torchrun without its launcher traceback.

When a worker fails, `torch.distributed.run` ends with a Python traceback and a framed `ChildFailedError` report
after the workers' own output. FIRM workers already print their one-line `error: ...` to stderr, so this wrapper
replaces torchrun's report with one line naming the first failed rank. Everything else (arguments, rendezvous,
worker environment — including the `PET_*` variables a PyTorchJob pod gets) is torchrun's own `run`.

Each rank runs through `firm.launch.rank_main` (line-buffered stdout/stderr) instead of torchrun's `python -u`, so
ranks that share a node's log never break each other's lines.

Exit codes follow the Training Operator's `ExitCode` restart policy: 1 when a worker failed by itself (a config or
data error: retrying cannot help), 128 + N when a worker or torchrun itself was killed by signal N (preemption,
OOM kill, `firmctl job cancel`: the pod may be restarted and resumes from its last checkpoint).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    import logging

    # the elastic agent's own "failed (exitcode: 1) local_rank: 0" report repeats the worker's `error:` line
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv if argv is not None else sys.argv[1:])
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
            print(f"error: {name} rank {rank} was killed by signal {-code}", file=sys.stderr)
            return 128 - code
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
