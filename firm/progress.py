"""Progress of long work (training steps, bench items, bytes copied, a server loading its models), on stderr.

On a terminal (stderr is a TTY) it is a transient Rich progress bar. Anywhere else — piped, in a KFP step, a
PyTorchJob pod, CI — a bar would print nothing useful, so a background thread prints one line every
`FIRM_PROGRESS_INTERVAL` seconds (default 30; 0 turns the lines off) while the work runs, and one last line at the
end if it printed any:

    progress: rl tiny-sd3-nft: step 12/30 (40%), 0.85 step/s, ETA 21s, elapsed 14s | reward 0.512

stdout is never written: commands keep it for their JSON.

    with Progress("bench random://0", total=len(items), unit="item") as p:
        for batch in batches:
            ...
            p.advance(len(batch))
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

INTERVAL_ENV = "FIRM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def progress_interval() -> float:
    """Seconds between progress lines when stderr is not a terminal (`FIRM_PROGRESS_INTERVAL`; 0 = no lines). A
    value that is not a number of seconds ≥ 0 is a `ValueError` naming the variable (never silently the default)."""
    import math

    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds ≥ 0 (0 turns the lines off)")
    return value


def format_duration(seconds: float) -> str:
    """`42s`, `3m07s`, `1h05m`."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - unreachable


class Progress:
    """Progress of one piece of work: `total` units (None: unknown, only the elapsed time is shown).

    `unit="B"` formats sizes and rates as bytes. `enabled=False` (e.g. on ranks other than 0) shows nothing.
    `tty` and `interval` default to `stderr.isatty()` and `progress_interval()`; `stream` to `sys.stderr`.
    """

    def __init__(
        self,
        label: str,
        total: float | None = None,
        *,
        unit: str = "step",
        completed: float = 0,
        enabled: bool = True,
        interval: float | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.completed = float(completed)
        self.info = ""
        self._start_completed = float(completed)
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._isatty() if tty is None else tty
        self._interval = progress_interval() if interval is None else interval
        self.enabled = enabled
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._task: Any = None
        self._t0 = time.monotonic()
        self.lines = 0  # lines printed (non-TTY mode)

    def _isatty(self) -> bool:
        try:
            return bool(self._stream.isatty())
        except (AttributeError, ValueError):
            return False

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self._t0 = time.monotonic()
        if not self.enabled:
            return self
        if self._tty:
            self._start_bar()
        elif self._interval > 0:
            self._thread = threading.Thread(target=self._beat, name="firm-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=et is not None)

    def close(self, failed: bool = False) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self.lines and not failed:
                self._emit(final=True)

    # -- updates -------------------------------------------------------------------------------------------------
    def advance(self, n: float = 1, info: str | None = None) -> None:
        """Add `n` units done (thread-safe: transfers report bytes from several threads)."""
        with self._lock:
            self.completed += n
            if info is not None:
                self.info = info
        self._refresh()

    def update(
        self, completed: float | None = None, info: str | None = None, total: float | None = None
    ) -> None:
        with self._lock:
            if completed is not None:
                self.completed = float(completed)
            if info is not None:
                self.info = info
            if total is not None:
                self.total = total
        self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, total=self.total, info=self._info_suffix())

    # -- rendering -----------------------------------------------------------------------------------------------
    def _info_suffix(self) -> str:
        return f"| {self.info}" if self.info else ""

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        if self.unit == "B":
            counts: list[Any] = [DownloadColumn(), TransferSpeedColumn()]
        else:
            counts = [MofNCompleteColumn()] if self.total is not None else []
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            *counts,
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn() if self.total else TimeElapsedColumn(),
            console=Console(file=self._stream),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(
            self.label, total=self.total, completed=self.completed, info=self._info_suffix()
        )

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            self._emit()

    def line(self, final: bool = False) -> str:
        """The one-line record printed when stderr is not a terminal."""
        with self._lock:
            done, total, info = self.completed, self.total, self.info
        elapsed = time.monotonic() - self._t0
        fmt = _bytes if self.unit == "B" else (lambda v: f"{v:g}")
        unit = "" if self.unit == "B" else f" {self.unit}"
        parts: list[str] = []
        if total:
            parts.append(f"{unit.strip()} {fmt(done)}/{fmt(total)} ({100 * done / total:.0f}%)".strip())
        elif done:
            parts.append(f"{unit.strip()} {fmt(done)}".strip())
        rate = (done - self._start_completed) / elapsed if elapsed > 0 else 0.0
        if done and rate > 0:
            parts.append(f"{_bytes(rate)}/s" if self.unit == "B" else f"{rate:.3g}{unit}/s")
            if total and not final and done < total:
                parts.append(f"ETA {format_duration((total - done) / rate)}")
        parts.append(f"{'done in' if final else 'elapsed'} {format_duration(elapsed)}")
        text = f"progress: {self.label}: {', '.join(parts)}"
        return f"{text} | {info}" if info else text

    def _emit(self, final: bool = False) -> None:
        try:
            self._stream.write(self.line(final=final) + "\n")
            self._stream.flush()
        except (ValueError, OSError):  # the stream was closed under us: progress is best effort
            return
        self.lines += 1


def print_done(what: str, seconds: float, outputs: str) -> None:
    """The closing line of a long command on stderr: `done: WHAT in 1m12s; OUTPUTS` (where its outputs are)."""
    print(f"done: {what} in {format_duration(seconds)}; {outputs}", file=sys.stderr, flush=True)
