"""`python -m firm.launch.rank_main (-m MODULE | SCRIPT) [args]`: one rank's entrypoint, whole lines on stdout/stderr.

torchrun starts every rank of a node as `python -u ...` with the node's stdout and stderr: the ranks share one log
(one `firmctl job logs` replica, one pod log), and unbuffered Python writes the pieces of a line separately (`print`
writes its text, then the newline), so two ranks' lines could interleave inside one line
(`rank 3 of 4 donerank 2 of 4 done`). `firm.launch.torchrun_quiet` starts each rank through this module instead:
stdout and stderr become line-buffered — each line reaches the log in one `write`, as soon as it ends, so logs stay
live (`--follow`) and every line stays whole (appends to a file, and pipe writes up to 4 KiB, are not split by the
kernel; a line longer than Python's 8 KiB buffer may still be written in pieces).
"""

from __future__ import annotations

import runpy
import sys


def line_buffered() -> None:
    """Make this process's stdout and stderr line-buffered, whatever `-u` / PYTHONUNBUFFERED asked for."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True, write_through=False)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] == "-m" and len(args) < 2):
        sys.exit("usage: python -m firm.launch.rank_main (-m MODULE | SCRIPT) [args]")
    line_buffered()
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
