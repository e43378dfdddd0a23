"""What a person sees of a local pipeline run: one line per stage, and each stage's whole output in its own log.

The KFP local runner writes everything to stdout — its log records, each task's executor input as JSON, every line
the component printed, its outputs — hundreds of lines per run. While a run lasts, `StageLogs` stands in for
`sys.stdout` and `sys.stderr` of this process (the runner streams each task's subprocess through `print`):

- every line goes to `RUN_DIR/logs/run.log`, and each task's lines (from "Executing task" to the next task) also to
  `RUN_DIR/logs/<task>.log`, where RUN_DIR is the run's folder under the pipeline root;
- the terminal gets one line per stage when it ends — status, stage name, time and the stage's headline figure
  (from the task's `executor_output.json`) — and, on a terminal, a Rich spinner for the running stage;
- `verbose=True` also echoes every line, as the runner printed it.

On failure `report_failure` prints the failing stage's last lines and the path of its log.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from firm.progress import format_duration

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_OUTPUT_FILE = re.compile(r'"outputFile": "([^"]+)"')
_RULE = re.compile(r"^\s*-*\s*$")  # the runner's blank lines and horizontal rules
# the last line of a Python traceback (`pkg.JobError: message`) or a FIRM `error: message` line
_CAUSE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit)|error): (.+)$")
TAIL_LINES = 20


class StageResult(BaseModel):
    """One task of a local pipeline run, as the terminal line and the report show it."""

    task: str
    name: str
    status: str = "not run"
    seconds: float | None = None
    headline: str = ""
    log: Path | None = None


def _metrics(output: dict[str, Any]) -> dict[str, float]:
    """Every number the task's artifacts carry (a Metrics artifact's `log_metric` values, dataset row counts)."""
    out: dict[str, float] = {}
    for group in output.get("artifacts", {}).values():
        for art in group.get("artifacts", []):
            for k, v in (art.get("metadata") or {}).items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[k] = float(v)
    return out


def _fmt(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.3g}"


def _pick(m: dict[str, float], pattern: str, limit: int = 3) -> str:
    """`key value` for up to `limit` metrics whose name matches `pattern`, in name order."""
    rx = re.compile(pattern)
    keys = sorted(k for k in m if rx.search(k))[:limit]
    return ", ".join(f"{k} {_fmt(m[k])}" for k in keys)


def _output(output: dict[str, Any]) -> str:
    value = (output.get("parameterValues") or {}).get("Output")
    return str(value) if value not in (None, "") else ""


# The figure each of FIRM's steps is judged by; any other task shows its output value.
_HEADLINES: dict[str, Callable[[dict[str, Any], dict[str, float]], str]] = {
    "curate-dataset": lambda o, m: ", ".join(
        f"{_fmt(m[k])} {label}"
        for k, label in (
            ("rows_train", "train rows"),
            ("rows_val", "val rows"),
            ("teacher_calls", "teacher calls"),
        )
        if k in m
    ),
    "train-critic": lambda o, m: _pick(m, r"^val_(mae|parse_rate|loss)$"),
    "bench-critic": lambda o, m: _pick(m, r"^mae_"),
    "deploy-reward-service": lambda o, m: next(
        (
            f"rollout: {a['metadata']['decision']}"
            for g in o.get("artifacts", {}).values()
            for a in g.get("artifacts", [])
            if isinstance((a.get("metadata") or {}).get("decision"), str)
        ),
        "",
    ),
    "rl-train": lambda o, m: _pick(m, r"^reward_(mean|parse_failure_rate)$"),
    "eval-policy": lambda o, m: (
        f"held-out reward {_fmt(m['eval_before_reward_mean'])} → {_fmt(m['eval_after_reward_mean'])}"
        if {"eval_before_reward_mean", "eval_after_reward_mean"} <= set(m)
        else _pick(m, r"reward_mean")
    ),
}


def headline(task: str, output: dict[str, Any]) -> str:
    """The stage's headline figure from its executor output (empty when it has none)."""
    m = _metrics(output)
    fn = _HEADLINES.get(task)
    text = fn(output, m) if fn else ""
    return text or _output(output)


class StageLogs(io.TextIOBase):
    """A text stream for the duration of one local run (see the module docstring). Thread-safe: the teacher endpoint
    of the quickstart and other helpers may write from their threads."""

    def __init__(
        self,
        root: Path,
        console: Console,
        *,
        names: dict[str, str] | None = None,
        verbose: bool = False,
        echo: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.root = root
        self.before = {p for p in root.iterdir()} if root.is_dir() else set()
        # bound to the stream `console` writes to now: a console made with `stderr=True` looks `sys.stderr` up on every
        # print, and during the run that is this object
        self.console = Console(
            file=console.file, force_terminal=console.is_terminal, no_color=console.no_color
        )
        self.names = names or {}
        self.verbose = verbose
        self.echo = echo
        self.stages: dict[str, StageResult] = {}
        self.current: str | None = None
        self.run_dir: Path | None = None
        self.failed: str | None = None
        self._buf = ""
        self._pending: list[tuple[str | None, str]] = []  # lines seen before the run's folder existed
        self._files: dict[str | None, TextIO] = {}
        self._started: dict[str, float] = {}
        self._lock = threading.RLock()
        self._progress: Progress | None = None
        self._spinner: Any = None

    # ----------------------------------------------------------------------------------------- stream API

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            while "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                self._line(line)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.flush()

    # ----------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> StageLogs:
        if self.console.is_terminal and not self.verbose:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                console=self.console, transient=True,
            )  # fmt: skip
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self._buf:
                self._line(self._buf)
                self._buf = ""
            self._find_run_dir(final=True)
            if self._progress is not None:
                self._progress.stop()
            for f in self._files.values():
                f.close()
            self._files.clear()

    # ----------------------------------------------------------------------------------------- lines

    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        if m := _START.search(line):
            self._start(m.group(1))
        self._log(line)
        if m := _END.search(line):
            self._end(m.group(1), m.group(2))
        if self.verbose and self.echo is not None:
            self.echo.write(raw + "\n")
            self.echo.flush()

    def _adopt_run_dir(self, line: str) -> None:
        """The run's folder, from the first task's executor input (`"outputFile": "ROOT/RUN/TASK/..."`): the folder
        this run writes to, even when another run under the same root starts at the same time."""
        if self.run_dir is None and (m := _OUTPUT_FILE.search(line)):
            path = Path(m.group(1))
            if path.parent.parent.parent == self.root:
                self._set_run_dir(path.parent.parent)

    def _set_run_dir(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        pending, self._pending = self._pending, []
        for task, line in pending:
            self._write(task, line)

    def _find_run_dir(self, final: bool = False) -> Path | None:
        """The run's folder once known; at a task's end or the run's, the newest new folder under the root (a task
        that failed before its executor printed its input), else a `failed-…` folder for the logs."""
        if self.run_dir is None and final:
            new = (
                [p for p in self.root.iterdir() if p.is_dir() and p not in self.before]
                if self.root.is_dir()
                else []
            )
            if new:
                self._set_run_dir(max(new, key=lambda p: p.stat().st_mtime))
            elif self._pending:
                self._set_run_dir(self.root / f"failed-{time.strftime('%Y-%m-%d-%H-%M-%S')}")
        return self.run_dir

    def log_path(self, task: str | None) -> Path | None:
        if self.run_dir is None:
            return None
        return self.run_dir / "logs" / f"{task or 'run'}.log"

    def _file(self, task: str | None) -> TextIO:
        if task not in self._files:
            path = self.log_path(task)
            assert path is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            self._files[task] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self._files[task]

    def _write(self, task: str | None, line: str) -> None:
        self._file(None).write(line + "\n")
        if task is not None:
            self._file(task).write(line + "\n")

    def _log(self, line: str) -> None:
        self._adopt_run_dir(line)
        if self.run_dir is None:
            self._pending.append((self.current, line))
        else:
            self._write(self.current, line)

    # ----------------------------------------------------------------------------------------- stages

    def _start(self, task: str) -> None:
        self.current = task
        self._started[task] = time.perf_counter()
        stage = self.stages.setdefault(task, StageResult(task=task, name=self.names.get(task, task)))
        stage.status = "running"
        if self._progress is not None:
            if self._spinner is not None:
                self._progress.remove_task(self._spinner)
            self._spinner = self._progress.add_task(escape(stage.name))

    def _end(self, task: str, status: str) -> None:
        stage = self.stages.setdefault(task, StageResult(task=task, name=self.names.get(task, task)))
        stage.status = status.lower()
        stage.seconds = time.perf_counter() - self._started.get(task, time.perf_counter())
        run_dir = self._find_run_dir(final=True)
        stage.log = self.log_path(task)
        if stage.status == "success" and run_dir is not None:
            try:
                stage.headline = headline(
                    task, json.loads((run_dir / task / "executor_output.json").read_text())
                )
            except (OSError, ValueError):
                stage.headline = ""
        elif stage.status != "success" and self.failed is None:
            self.failed = task
        if self._progress is not None and self._spinner is not None:
            self._progress.remove_task(self._spinner)
            self._spinner = None
        self.console.print(stage_line(stage), highlight=False, soft_wrap=True)

    def _failed_log(self) -> tuple[str | None, Path | None, list[str]]:
        """(failing task, its log, the log's lines without the runner's blank lines and rules)."""
        self.flush()
        task = self.failed or self.current
        for path in (self.log_path(task), self.log_path(None)):
            if path is not None and path.is_file():
                text = path.read_text(errors="replace").splitlines()
                return task, path, [ln for ln in text if not _RULE.match(ln)]
        return task, None, []

    def failure_cause(self) -> str:
        """The failing stage's own error: the last exception message or `error:` line in its log ("" if none)."""
        with self._lock:
            _, _, lines = self._failed_log()
        for ln in reversed(lines):
            if m := _CAUSE.match(ln):
                return m.group(1).strip()
        return ""

    def failed_stage(self) -> StageResult | None:
        task = self.failed or self.current
        return self.stages.get(task) if task else None

    def report_failure(self, lines: int = TAIL_LINES) -> None:
        """The failing stage's last `lines` lines and its log's path (the caller prints the `error:` line)."""
        with self._lock:
            task, path, text = self._failed_log()
            if path is None:
                return
            tail = text[-lines:]
            name = self.stages[task].name if task in self.stages else "the run"
            self.console.print(f"--- last {len(tail)} lines of {escape(name)} ---", highlight=False)
            for ln in tail:
                self.console.print(escape(ln), highlight=False, soft_wrap=True)
            self.console.print(f"log: {path}", highlight=False, soft_wrap=True)


def stage_line(stage: StageResult) -> str:
    """`✓ train critic   1m12s  val_mae 0.41` (Rich markup)."""
    ok = stage.status == "success"
    mark = "[green]✓[/]" if ok else "[red]✗[/]"
    took = format_duration(stage.seconds) if stage.seconds is not None else "-"
    figure = escape(stage.headline) if ok else f"[red]{escape(stage.status)}[/]"
    return f"{mark} {escape(stage.name):<22} {took:>6}  {figure}".rstrip()
