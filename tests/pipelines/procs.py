"""Which tritonserver processes are alive, read from /proc: imported by the deploy test and by its pipeline's probe
step (a KFP local-runner subprocess), so it imports nothing heavy."""

from __future__ import annotations

from pathlib import Path


def tritonservers(home: Path) -> list[int]:
    """Live tritonserver processes serving from `home` (a test's FIRM_HOME: other servers on the machine do not
    count)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if argv[0].endswith(b"tritonserver") and state != "Z" and str(home).encode() in b" ".join(argv):
                out.append(int(entry.name))
    return out
