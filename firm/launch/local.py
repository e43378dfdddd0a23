"""Local launcher: run a FIRM entrypoint under `torchrun --nproc_per_node N -m MODULE ARGS` on this machine.

The entrypoints read rank/world/master from the standard torch.distributed environment, so the same module runs
here under torchrun and as the command of a PyTorchJob. Used by `firmctl critic train` and the RL trainer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from firm.errors import ConfigError
from firm.processes import free_port


def torchrun_command(
    module: str, args: Sequence[str], nproc: int, *, master_port: int | None = None
) -> list[str]:
    """The torchrun command line for `nproc` local processes (rendezvous on 127.0.0.1)."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(master_port or free_port()),
        "-m",
        module,
        *args,
    ]


def run_local(
    module: str,
    args: Sequence[str],
    nproc: int = 1,
    *,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run `module` with `args` under torchrun with `nproc` processes and return its exit code.

    The children inherit stdout/stderr, so their one-line errors reach the user unchanged.
    """
    # torchrun itself, minus its launcher traceback on a worker failure (the worker's `error:` line says why)
    cmd = torchrun_command(module, args, nproc)
    cmd[1:3] = ["-m", "firm.launch.torchrun_quiet"]
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.run(cmd, env=full_env, check=False)
    return proc.returncode
