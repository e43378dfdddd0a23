"""Process and network helpers shared across packages: process trees (Linux `/proc`; elsewhere they degrade to what
`os.kill` can tell) for the local job supervisor, the local reward service and the Triton server wrapper, and
`free_port` for rendezvous and server ports (critic SFT, the launchers, `TritonServer`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on `host` (default 127.0.0.1, e.g. for a torch.distributed rendezvous)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
