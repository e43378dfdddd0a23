"""Run every benchmark in benchmarks/ with its default sizes and regenerate BENCHMARKS.md (`make bench`).

    .venv/bin/python benchmarks/run_all.py                       # every benchmark (long: tens of minutes)
    .venv/bin/python benchmarks/run_all.py --only reward_parsing storage_throughput
    .venv/bin/python benchmarks/run_all.py --skip critic_sft pipeline_overhead
    .venv/bin/python benchmarks/run_all.py --list                # names, default commands, last result
    .venv/bin/python benchmarks/run_all.py --render              # rebuild BENCHMARKS.md only, running nothing

Each benchmark is a script `benchmarks/<name>.py`, found by glob (a new script is picked up without editing this
file), run as `python benchmarks/<name>.py` plus the arguments in `EXTRA_ARGS` (only to collect raw numbers the
script can write itself; never to change sizes). For each one this writes
  * `benchmarks/results/<name>.md`: what the script printed on stdout (Markdown tables; JSON lines are turned into
    a table), and
  * `benchmarks/results/<name>.json`: the raw record — command, date, machine (CPU model, cores, RAM, GPUs, torch,
    Python, git commit), load average before and after, wall time, return code, the stdout, every Markdown table
    parsed into rows of dicts, every JSON line, the script's own JSON output where it has one, and stderr's tail;
then regenerates BENCHMARKS.md from every result in `benchmarks/results/` and the hand-written notes in
`benchmarks/notes/<name>.md` (included verbatim, so they survive regeneration; `notes/_intro.md` opens the file and
notes without a script of their name become sections of their own). A benchmark that fails (non-zero exit or
timeout) is recorded with its error and the run goes on; its section shows the error next to its last successful
output.

Benchmarks run one after the other in the repository root with the caller's environment (the scripts choose their
own thread counts); the machine should be otherwise quiet, and the load average recorded with each run says
whether it was.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
RESULTS = BENCH_DIR / "results"
NOTES = BENCH_DIR / "notes"
OUTPUT = REPO / "BENCHMARKS.md"

# Arguments added to a script's default command, only to collect raw numbers it can write itself ({raw}:
# benchmarks/results/<name>.script.json, whose content also goes into the result's "script_json").
EXTRA_ARGS: dict[str, list[str]] = {"reward_service": ["--json", "{raw}"]}
# Cheapest first, so `make bench` reports the quick ones before the long ones start (unknown scripts go last).
ORDER = [
    "reward_parsing", "storage_throughput", "firm_bench", "critic_scoring", "curation", "critic_copies",
    "rl_step", "reward_service", "pipeline_overhead", "critic_sft",
]  # fmt: skip
TIMEOUT_S = 3 * 3600


# ------------------------------------------------------------------------------------------------ discovery


def discover() -> dict[str, Path]:
    scripts = {
        p.stem: p
        for p in sorted(BENCH_DIR.glob("*.py"))
        if p.stem != "run_all" and not p.stem.startswith("_")
    }
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(scripts.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def describe(script: Path) -> str:
    """The first line of the script's docstring (read without importing it)."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    except SyntaxError:
        return ""
    first = " ".join(doc.strip().split("\n\n")[0].split())  # the first paragraph, up to its first sentence
    m = re.match(r"^(.+?\.)(\s|$)", first)
    return (m.group(1) if m else first).rstrip(".")


def command(name: str, script: Path) -> list[str]:
    raw = (RESULTS / f"{name}.script.json").relative_to(REPO)
    extra = [a.replace("{raw}", str(raw)) for a in EXTRA_ARGS.get(name, [])]
    return ["python", str(script.relative_to(REPO)), *extra]


# ------------------------------------------------------------------------------------------------ machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        gpus = [line.strip() for line in out.splitlines() if line.strip()]
    try:
        from importlib.metadata import version

        torch = version("torch")
    except Exception:
        torch = None
    return {
        "cpu": cpu.group(1).strip() if cpu else platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "gpus": gpus,
        "torch": torch,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def machine_line(m: dict[str, Any]) -> str:
    gpu = ", ".join(m.get("gpus") or []) or "no GPU"
    ram = f", {m['ram_gib']} GiB" if m.get("ram_gib") else ""
    return (
        f"{m.get('cpu')} ({m.get('arch')}), {m.get('cores_usable')} of {m.get('cores')} cores usable{ram}, {gpu}, "
        f"torch {m.get('torch')}, Python {m.get('python')}"
    )


# ------------------------------------------------------------------------------------------------ parsing


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_tables(text: str) -> list[dict[str, Any]]:
    """Every Markdown table in `text` as {"header": [...], "rows": [{header: cell}, ...]}."""
    tables, lines, i = [], text.splitlines(), 0
    while i + 1 < len(lines):
        if lines[i].lstrip().startswith("|") and re.match(r"^\s*\|?\s*:?-{3,}", lines[i + 1]):
            header = _cells(lines[i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = _cells(lines[i])
                rows.append(
                    {h or f"col{k}": (cells[k] if k < len(cells) else "") for k, h in enumerate(header)}
                )
                i += 1
            tables.append({"header": header, "rows": rows})
        else:
            i += 1
    return tables


def json_lines(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def table_of(records: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in records]
    return "\n".join(lines)


def output_markdown(stdout: str) -> str:
    """The script's stdout for BENCHMARKS.md: JSON lines dropped from the text and, when that leaves no table,
    shown as one."""
    records = [r for r in json_lines(stdout) if isinstance(r, dict)]
    text = "\n".join(
        line
        for line in stdout.splitlines()
        if not (line.strip().startswith("{") and line.strip().endswith("}"))
    ).strip()
    if records and not markdown_tables(text):
        text = (text + "\n\n" if text else "") + table_of(records)
    return text + "\n"


# ------------------------------------------------------------------------------------------------ running


def run_one(name: str, script: Path, timeout: float) -> dict[str, Any]:
    argv = command(name, script)
    raw = RESULTS / f"{name}.script.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw.unlink(missing_ok=True)
    print(f"== {name}: {shlex.join(argv)}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    date = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        rc, stdout, stderr, error = proc.returncode, proc.stdout, proc.stderr, None
        if rc != 0:
            error = f"exit {rc}"
    except subprocess.TimeoutExpired as exc:
        rc = -9
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        error = f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    script_json = None
    if raw.is_file():
        try:
            script_json = json.loads(raw.read_text())
        except json.JSONDecodeError:
            script_json = raw.read_text()
    record = {
        "name": name,
        "description": describe(script),
        "command": shlex.join(argv),
        "date": date.isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(wall, 1),
        "returncode": rc,
        "error": error,
        "stdout": stdout,
        "stderr_tail": "\n".join(stderr.splitlines()[-40:]),
        "tables": markdown_tables(stdout),
        "json_lines": json_lines(stdout),
        "script_json": script_json,
    }
    status = "ok" if error is None else f"FAILED ({error})"
    print(f"   {name}: {status} in {wall:.0f} s", file=sys.stderr, flush=True)
    return record


def save(record: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{record['name']}.json"
    if record["error"] is not None and path.is_file():  # keep the last successful output next to the failure
        previous = json.loads(path.read_text())
        last = previous if previous.get("error") is None else previous.get("last_success")
        if last:
            last = {k: v for k, v in last.items() if k != "last_success"}
            record["last_success"] = last
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    if record["error"] is None:
        (RESULTS / f"{record['name']}.md").write_text(output_markdown(record["stdout"]))


# ------------------------------------------------------------------------------------------------ rendering


def _load_results() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(RESULTS.glob("*.json")) if RESULTS.is_dir() else []:
        if path.name.endswith(".script.json"):  # a script's own JSON, already inside its record
            continue
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    return out


def _note(name: str) -> str | None:
    path = NOTES / f"{name}.md"
    return path.read_text(encoding="utf-8").strip() + "\n" if path.is_file() else None


def _title(text: str, fallback: str) -> str:
    m = re.search(r"^#+\s+(.+)$", text, re.M)
    return m.group(1).strip() if m else fallback


def _run_summary(r: dict[str, Any]) -> str:
    load = f"load {r['load_before'][0]} → {r['load_after'][0]}"
    date = dt.datetime.fromisoformat(r["date"]).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{date}, {r['wall_s']} s, {load}"


def render() -> str:
    scripts = discover()
    results = _load_results()
    names = list(scripts) + [n for n in results if n not in scripts]
    out = [
        "# FIRM benchmarks",
        "",
        "<!-- Generated by `make bench` (benchmarks/run_all.py): edit benchmarks/notes/*.md, not this file. -->",
        "",
        "Generated by `make bench` (`python benchmarks/run_all.py`), which runs every script in `benchmarks/` with its "
        "default sizes and rewrites this file from `benchmarks/results/` (each run's output and raw JSON) and the "
        "hand-written notes in `benchmarks/notes/`. `--only NAME...` / `--skip NAME...` run a subset, `--list` shows "
        "them, `--render` rebuilds this file without running anything. Compare ratios measured side by side in one "
        "run, not absolute numbers across runs: the machines are shared and the recorded load average says how "
        "busy each run's was.",
        "",
    ]
    intro = _note("_intro")
    if intro:
        out += [intro]
    out += [
        "## Latest runs",
        "",
        "| benchmark | what | latest run, wall time, load average before → after | machine | status |",
    ]
    out += ["|---|---|---|---|---|"]
    for name in names:
        r = results.get(name)
        what = describe(scripts[name]) if name in scripts else (r or {}).get("description", "")
        if r is None:
            kept = "results recorded by hand in its notes" if _note(name) else "—"
            out.append(f"| [{name}](#{name}) | {what} | not run by `make bench` yet | | {kept} |")
            continue
        status = "ok" if r.get("error") is None else f"**failed**: {r['error']}"
        out.append(
            f"| [{name}](#{name}) | {what} | {_run_summary(r)} | {machine_line(r['machine'])} | {status} |"
        )
    extra_notes = sorted(
        p.stem for p in NOTES.glob("*.md") if not p.stem.startswith("_") and p.stem not in names
    )
    if extra_notes:
        out += [
            "",
            "Other measurements (no script of their own): " + ", ".join(f"[{n}](#{n})" for n in extra_notes),
        ]
    out.append("")
    for name in names:
        r = results.get(name)
        what = describe(scripts[name]) if name in scripts else (r or {}).get("description", "")
        out += [f'<a id="{name}"></a>', "", f"## {name}: {what}" if what else f"## {name}", ""]
        if r is None:
            cmd = shlex.join(command(name, scripts[name])) if name in scripts else ""
            kept = " Results recorded by hand are in its notes." if _note(name) else ""
            out += [f"Not run by `make bench` yet; its default command is `{cmd}`.{kept}", ""]
        else:
            m = r["machine"]
            commit = f", commit {m.get('git_commit')}{' (with local changes)' if m.get('git_dirty') else ''}"
            out += [
                f"Latest run: {_run_summary(r)}, exit {r['returncode']} — {machine_line(m)}{commit}. "
                f"Raw: [benchmarks/results/{name}.json](benchmarks/results/{name}.json).",
                "",
                "    " + r["command"],
                "",
            ]
            if r.get("error") is not None:
                out += [
                    f"**Failed: {r['error']}.** Last lines of its stderr:",
                    "",
                    "```",
                    r.get("stderr_tail", ""),
                    "```",
                    "",
                ]
                last = r.get("last_success")
                if last:
                    out += [
                        f"Last successful run: {_run_summary(last)} — {machine_line(last['machine'])}:",
                        "",
                    ]
                    out += [output_markdown(last["stdout"])]
            else:
                md = RESULTS / f"{name}.md"
                out += [md.read_text().strip() if md.is_file() else output_markdown(r["stdout"]).strip(), ""]
        note = _note(name)
        if note:
            out += [f"### Notes on {name}", "", note]
    for name in extra_notes:
        note = _note(name) or ""
        out += [f'<a id="{name}"></a>', "", f"## {_title(note, name)}", ""]
        out += [re.sub(r"\A#+\s+.+\n+", "", note)]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    ap.add_argument("--skip", nargs="+", metavar="NAME", default=[], help="run all but these")
    ap.add_argument(
        "--list", action="store_true", help="list the benchmarks and their last results, run nothing"
    )
    ap.add_argument(
        "--render", action="store_true", help="only rebuild BENCHMARKS.md from results/ and notes/"
    )
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per benchmark (default 3 h)")
    ap.add_argument("--output", type=Path, default=OUTPUT, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    scripts = discover()
    unknown = sorted((set(a.only or []) | set(a.skip)) - set(scripts))
    if unknown:
        ap.error(f"no benchmark named {', '.join(unknown)} (known: {', '.join(scripts)})")
    if a.list:
        results = _load_results()
        for name, script in scripts.items():
            r = results.get(name)
            last = (
                "never run"
                if r is None
                else f"{_run_summary(r)}, {'ok' if r.get('error') is None else r['error']}"
            )
            print(
                f"{name:<20} {shlex.join(command(name, script))}\n{'':<20} {describe(script)}\n{'':<20} last: {last}"
            )
        return 0
    failed = []
    if not a.render:
        chosen = [n for n in scripts if (a.only is None or n in a.only) and n not in a.skip]
        for name in chosen:
            record = run_one(name, scripts[name], a.timeout)
            save(record)
            if record["error"] is not None:
                failed.append(name)
            # after each one, so an interrupted `make bench` keeps what it has measured
            a.output.write_text(render())
    a.output.write_text(render())
    print(
        f"wrote {a.output.relative_to(REPO) if a.output.is_relative_to(REPO) else a.output}", file=sys.stderr
    )
    if failed:
        print(f"failed: {', '.join(failed)} (see their sections)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
