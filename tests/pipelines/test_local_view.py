"""`pipelines.local_view.StageLogs`: the KFP local runner's output goes to one log per task under the run's folder,
the terminal gets one line per stage with its headline figure, and a failure shows the stage's last lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from pipelines.local_view import StageLogs, headline


def _runner_output(run_dir: Path, task: str, status: str, body: list[str]) -> str:
    """What the local runner prints for one task (its colour codes included), and the files it leaves."""
    (run_dir / task).mkdir(parents=True, exist_ok=True)
    if status == "SUCCESS":
        out = {"parameterValues": {"Output": f"file:///store/{task}"}, "artifacts": {}}
        (run_dir / task / "executor_output.json").write_text(json.dumps(out))
    lines = [
        f"21:29:35.831 - INFO - Executing task \x1b[96m'{task}'\x1b[0m",
        "21:29:35.833 - INFO - Streamed logs:",
        "",
        *[f"    {b}" for b in body],
        f"21:29:36.000 - INFO - Task \x1b[96m'{task}'\x1b[0m finished with status \x1b[92m{status}\x1b[0m",
        "-" * 80,
    ]
    return "\n".join(lines) + "\n"


def test_each_task_gets_its_log_and_one_line(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    (root / "an-earlier-run").mkdir()
    term = io.StringIO()
    logs = StageLogs(root, Console(file=term, width=200), names={"curate-dataset": "curate"})
    with logs:
        logs.write("21:29:35.821 - INFO - Running pipeline: 'firm'\n")  # before the run's folder exists
        run_dir = root / "firm-2026-12-06-21-29-35"
        out = _runner_output(run_dir, "curate-dataset", "SUCCESS", ['{"inputs": {}}', "curated 10 items"])
        for i in range(0, len(out), 7):  # the runner's writes arrive in arbitrary pieces
            logs.write(out[i : i + 7])
        logs.write(_runner_output(run_dir, "train-critic", "FAILURE", [f"step {i}" for i in range(30)]))
        logs.write("    JobError: job firm-sft-1 failed: error: no such critic\n")
    assert logs.run_dir == run_dir
    lines = term.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].split() == ["✓", "curate", "0s", "file:///store/curate-dataset"]
    assert lines[1].startswith("✗ train-critic") and lines[1].endswith("failure")
    curate = (run_dir / "logs" / "curate-dataset.log").read_text()
    assert "Executing task 'curate-dataset'" in curate and "curated 10 items" in curate
    assert "\x1b" not in curate
    assert "step 0" not in curate
    every = (run_dir / "logs" / "run.log").read_text()
    assert every.startswith("21:29:35.821 - INFO - Running pipeline") and "step 29" in every
    assert logs.failed == "train-critic"
    assert logs.failure_cause() == "job firm-sft-1 failed: error: no such critic"

    term.truncate(0)
    term.seek(0)
    logs.report_failure(lines=5)
    shown = term.getvalue().splitlines()
    assert shown[0] == "--- last 5 lines of train-critic ---"
    assert shown[-1] == f"log: {run_dir / 'logs' / 'train-critic.log'}"
    assert shown[-2].endswith("no such critic") and len(shown) == 7


def test_headlines_name_each_steps_figure() -> None:
    def out(meta: dict, value: str = "") -> dict:
        return {"parameterValues": {"Output": value}, "artifacts": {"m": {"artifacts": [{"metadata": meta}]}}}

    assert headline("curate-dataset", out({"rows_train": 792, "rows_val": 8, "teacher_calls": 1200})) == (
        "792 train rows, 8 val rows, 1200 teacher calls"
    )
    assert headline("train-critic", out({"val_mae": 0.375, "val_parse_rate": 1.0, "val_loss": 0.04})) == (
        "val_loss 0.04, val_mae 0.375, val_parse_rate 1"
    )
    assert headline("eval-policy", out({"eval_before_reward_mean": 0.41, "eval_after_reward_mean": 0.5})) == (
        "held-out reward 0.41 → 0.5"
    )
    assert headline("deploy-reward-service", out({}, "127.0.0.1:8001")) == "127.0.0.1:8001"
    assert headline("stop-reward-service", out({})) == ""


def test_the_run_folder_is_the_one_the_executor_writes_to(tmp_path: Path) -> None:
    """Two local runs under one pipeline root (two `firmctl pipeline run --local` at once): each run's logs go to its
    own folder — the one its tasks' executor input names — not to whichever folder is newest."""
    import os

    root = tmp_path / "runs"
    mine, other = root / "firm-critic-2026-12-06-21-00-00", root / "firm-critic-2026-12-06-21-00-01"
    root.mkdir()
    logs = StageLogs(root, Console(file=io.StringIO(), width=200))
    with logs:
        first = _runner_output(mine, "curate-dataset", "SUCCESS", [
            "[KFP Executor 2026-12-06 21:00:00,001 INFO]: Got executor_input:",
            f'        "outputFile": "{mine}/curate-dataset/executor_output.json"',
        ])  # fmt: skip
        other.mkdir()  # the other run started a moment later: its folder is the newest
        os.utime(other, (mine.stat().st_mtime + 10, mine.stat().st_mtime + 10))
        logs.write(first)
        logs.write(_runner_output(mine, "train-critic", "SUCCESS", ["step 1"]))
    assert logs.run_dir == mine
    assert (mine / "logs" / "train-critic.log").is_file() and not (other / "logs").exists()
