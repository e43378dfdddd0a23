"""`python -m firm.launch.torchrun_quiet [torchrun args]`: torchrun without its launcher traceback.

When a worker fails, `torch.distributed.run` ends with a Python traceback and a framed `ChildFailedError` report
after the workers' own output. FIRM workers already print their one-line `error: ...` to stderr, so this wrapper
replaces torchrun's report with one line naming the first failed rank and exits 1 (what torchrun exits with).
Everything else (arguments, rendezvous, worker environment) is torchrun's own `run`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv if argv is not None else sys.argv[1:]))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(
            f"error: {exc.name} failed on rank {rank} (exit code {failure.exitcode}); its error is above",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
