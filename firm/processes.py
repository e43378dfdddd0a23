"""Process and network helpers shared across packages: process trees (Linux `/proc`; elsewhere they degrade to what
`os.kill` can tell) for the local job supervisor, the local reward service and the Triton server wrapper,
`free_port` for rendezvous and server ports (critic SFT, the launchers, `TritonServer`), and the start and end of
torch.distributed's default process group in the distributed entry points (critic SFT, RL)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on `host` (default 127.0.0.1, e.g. for a torch.distributed rendezvous)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Modules that bind the default process group as a default argument when they are imported. Imported after
# `init_process_group` (transformers' model loading and saving, DDP, FSDP and DeepSpeed import them on the way), they
# hold the live group for good, so `destroy_process_group` cannot end its backend (torch 2.13, DeepSpeed 0.19).
# (`torch.distributed.optim.zero_redundancy_optimizer` does it too; nothing FIRM runs imports it.)
_BIND_THE_DEFAULT_GROUP = (
    "torch.distributed.nn.functional",  # `broadcast(tensor, src, group=group.WORLD)` and nine more
    "torch.distributed.fsdp.sharded_grad_scaler",  # `ShardedGradScaler(..., process_group=dist.group.WORLD)`
    "deepspeed.comm.torch",  # `TorchBackend.barrier` and `.monitored_barrier`
)


def before_process_group() -> None:
    """Call right before creating the default process group: imports the modules that would otherwise keep it (and
    its backend's threads) alive until interpreter exit. Imported first, they bind the placeholder instead."""
    import importlib
    import importlib.util

    for name in _BIND_THE_DEFAULT_GROUP:
        if importlib.util.find_spec(name.partition(".")[0]) is not None:
            importlib.import_module(name)


def end_process_group() -> None:
    """Destroy the default process group and, with it, its backend's threads, while the interpreter is whole.

    A DDP reducer and the model it wraps hold the backend too, until they are freed: call this once the frame that
    held the run has returned. It collects garbage first (a model can sit in reference cycles), so that the backend
    ends here rather than during interpreter exit, where its threads are torn down in no set order (one rank of a
    finished 2-rank job was seen aborting there, "terminate called without an active exception", which failed the
    job). See `before_process_group` for the other thing that keeps a backend alive, and
    `firm.critic.sft.release_engine` for what a DeepSpeed engine needs first. Where DeepSpeed set up the groups, its
    own `destroy_process_group` ends them, so that its references to them go too."""
    import gc
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_initialized():
        return
    gc.collect()
    deepspeed_comm = sys.modules.get("deepspeed.comm")
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()  # torch's, and DeepSpeed's own references to the groups go too
    else:
        dist.destroy_process_group()


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None when unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int | None, cmdline_contains: bytes | None = None) -> bool:
    """True when `pid` runs and is not a zombie; with `cmdline_contains`, its command line must also hold those
    bytes (a reused pid of another program does not count)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path(f"/proc/{pid}").is_dir():
        return True  # no /proc: os.kill is all we know
    fields = stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return False
    if cmdline_contains is None:
        return True
    try:
        return cmdline_contains in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children first); empty where /proc does not exist."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    stack = [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def tree_memory(pid: int) -> dict[str, int]:
    """Resident memory of `pid` and all its descendants, in bytes: `rss` (each process's resident set, shared pages
    counted in every process) and `pss` (proportional: a page shared by n processes counts 1/n in each, so the sum
    is what the tree really holds). Zeros where /proc does not exist."""
    total = {"rss": 0, "pss": 0, "processes": 0}
    for p in [pid, *descendants(pid)]:
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = {}
        for line in text.splitlines()[1:]:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name.strip()] = int(parts[0]) * 1024
        total["rss"] += fields.get("Rss", 0)
        total["pss"] += fields.get("Pss", 0)
        total["processes"] += 1
    return total
