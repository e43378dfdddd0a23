"""Imported by Python at start-up in every process whose PYTHONPATH begins with this folder
(`tests._threads_after_main.recording_env` puts it there). In a torchrun rank (RANK set) with THREADS_DIR set, it
records at interpreter exit which of the process's threads still run — their names, from /proc/self/task — in
$THREADS_DIR/rank-<RANK>.json. Other processes (the launcher, torchrun's agent) record nothing. Every process then
runs the sitecustomize this one shadows, if there is one.

Exit handlers run after the entry point's `main` has returned and its frame is gone, and before the interpreter
tears anything down: a rank whose process group ended with the run has no gloo thread left here, one whose group
is still held (a module's default argument, a live DDP reducer or DeepSpeed engine) still runs them."""

from __future__ import annotations

import os

if os.environ.get("THREADS_DIR") and os.environ.get("RANK") is not None:
    import atexit

    def _record_threads() -> None:
        import contextlib
        import json

        names = []
        for task in sorted(os.listdir("/proc/self/task")):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as f:  # it may have ended
                names.append(f.read().strip())
        path = os.path.join(os.environ["THREADS_DIR"], f"rank-{os.environ['RANK']}.json")
        with open(path, "w") as f:
            json.dump(names, f)

    atexit.register(_record_threads)


def _chain() -> None:
    """Run the sitecustomize this one shadows (a distribution's or an environment's, later on sys.path), as Python
    would have without this folder first on PYTHONPATH."""
    import importlib.machinery
    import importlib.util
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_chain()
