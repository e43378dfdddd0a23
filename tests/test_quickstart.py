"""`firmctl quickstart` end to end: the `firm` pipeline through the KFP local runner on tiny models, checked from the
report it writes (`summary.json`) and the pipeline's own step outputs. The editing task (the default); `--task gen`
runs the same DAG with a generation critic and a Qwen-Image policy — measured, not run here, to keep the suite under
its time budget (benchmarks/notes/quickstart.md: 1 m 52 s, held-out reward 0.39 → 0.68)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DAG = [
    "curate-dataset", "train-critic", "bench-critic", "export-to-triton", "deploy-reward-service", "rl-train",
    "eval-policy", "stop-reward-service",
]  # fmt: skip


@pytest.mark.slow
# 5 min alone on a slow day, 8 min in the suite, 12 min beside a busy loop (2026-12-06)
@pytest.mark.timeout(1500)
def test_quickstart_runs_the_firm_pipeline_and_its_report_holds(tmp_path: Path) -> None:
    env = {**os.environ, "FIRM_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    for key in [k for k in env if k.startswith("FIRM_") and k != "FIRM_HOME"]:
        del env[key]  # the embedded default: a local store under FIRM_HOME
    proc = subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "quickstart", "--workdir", str(tmp_path / "qs"), "--size", "tiny"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = json.loads(proc.stdout)  # stdout holds exactly one JSON document
    summary = json.loads(Path(printed["summary"]).read_text())
    edit = summary["tasks"]["edit"]

    # every stage of the DAG ran, in order, and succeeded
    assert [s["task"] for s in edit["stages"]] == DAG
    assert all(s["status"] == "success" and s["seconds"] > 0 for s in edit["stages"]), edit["stages"]
    run_dir = Path(edit["run_dir"])

    # the terminal (no TTY here) got one line per stage with its headline figure, and the whole run fits on one
    # screen; each stage's whole output — the KFP executor's JSON, the job's log — is in its log file
    err = proc.stderr.splitlines()
    assert len(err) + len(proc.stdout.splitlines()) <= 40, proc.stderr
    for s in edit["stages"]:
        (line,) = [ln for ln in err if ln.startswith(f"✓ {s['name']} ")]
        assert line.endswith(s["headline"]), (line, s)
        assert Path(s["log"]) == run_dir / "logs" / f"{s['task']}.log" and Path(s["log"]).is_file()
        assert f"Executing task '{s['task']}'" in Path(s["log"]).read_text()
    by_task = {s["task"]: s for s in edit["stages"]}
    assert "val_mae" in by_task["train-critic"]["headline"]
    assert "mae_edit_overall" in by_task["bench-critic"]["headline"]
    assert by_task["eval-policy"]["headline"].startswith("held-out reward")
    assert "Warning" not in proc.stderr and "Executing task" not in proc.stderr and "{" not in proc.stderr
    assert "Got executor_input" in (run_dir / "logs" / "train-critic.log").read_text()
    assert "world 2, global batch 8" in (run_dir / "logs" / "run.log").read_text()

    # curation: every item went through the teacher endpoint (difference report + two axes)
    critic = edit["critic"]
    assert critic["teacher_calls"] == 3 * summary["size"]["curation_items"]
    assert (
        critic["dataset"].startswith((tmp_path / "home" / "store").as_uri())
        and "/curated/edit-" in critic["dataset"]
    )
    # SFT ran as a 2-process job of the local launch backend
    train_log = (run_dir / "logs" / "train-critic.log").read_text()
    assert "world 2, global batch 8" in train_log and "[firm] job firm-sft-" in train_log

    # the critic learned BOTH axes: ≥ 30 % lower MAE than the mean predictor, and below the random critic
    for axis in ("execution", "consistency"):
        a = critic["axes"][axis]
        assert a["mae"] <= 0.7 * a["mean_predictor_mae"], (axis, a)
        assert a["mae"] < a["random_mae"] and a["parse_failures"] == 0, (axis, a)
    assert edit["checks"]["critic_beats_mean_baseline"] and edit["checks"]["critic_beats_random"]
    # the bench measured its confidence (calibration per axis) and the summary prints the MAE of its most confident
    # 80 % per axis. Whether that is below the plain MAE is asserted on a learned critic in tests/sft/test_train.py,
    # not here: on these 20 items per axis one swapped item decides it (the answers write their rationale first, so
    # the score digit's confidence is taken after the count was already written)
    (sel_line,) = [ln for ln in err if ln.startswith("edit: selective MAE at 80% (most confident) ")]
    for axis in ("execution", "consistency"):
        a = critic["axes"][axis]
        assert a["selective_mae_80"] is not None and 0 <= a["selective_mae_80"] <= 4, (axis, a)
        assert f"{axis} {a['selective_mae_80']:.3g}" in sel_line, sel_line

    # the rubric pack trained on is the one benchmarked and served
    from firm.rewards.packs import load_pack
    from firm.storage import read_manifest

    def executor(step: str) -> dict:
        return json.loads((run_dir / step / "executor_output.json").read_text())

    ref = load_pack().ref
    assert executor("bench-critic")["artifacts"]["report"]["artifacts"][0]["metadata"]["rubrics"] == ref
    repo = executor("export-to-triton")
    assert repo["artifacts"]["repository"]["artifacts"][0]["metadata"]["rubrics"] == ref
    files = {f.path for f in read_manifest(repo["parameterValues"]["Output"]).files}
    assert {"firm_engine/1/rubrics.yaml", "firm_critic/config.pbtxt"} <= files

    # rewards came through the deployed tritonserver: the server itself counted the reward inferences
    rl = edit["rl"]
    assert rl["served_inferences"].get("firm_edit_reward", 0) > 0 and edit["checks"]["rewards_through_triton"]
    assert rl["steps"] == summary["size"]["rl_steps"]
    assert {"reward/mean", "reward/execution", "reward/consistency"} <= set(rl["curves"])
    # the policy was evaluated on held-out prompts before and after RL, through the same service
    assert {"reward_mean", "execution", "consistency"} <= set(rl["before"]) & set(rl["after"])
    assert 0.0 <= rl["before"]["reward_mean"] <= 1.0 and 0.0 <= rl["after"]["reward_mean"] <= 1.0
    assert rl["before"]["parse_failure_rate"] == 0.0
    # RL from the warmed-up base policy raised the critic's mean reward on held-out prompts (measured on this size:
    # 0.22 → 0.40; the training curve rises too)
    assert rl["after"]["reward_mean"] > rl["before"]["reward_mean"] + 0.05, (rl["before"], rl["after"])
    assert edit["checks"]["rl_reward_improved"]
    curve = rl["curves"]["reward/mean"]
    assert sum(curve[-2:]) / 2 > sum(curve[:2]) / 2, curve
    warmup = rl["base_policy"]["warmup"]
    assert warmup["steps"] == summary["size"]["policy_warmup_steps"]
    assert warmup["last_loss"] < warmup["first_loss"]
    lora_files = {f.path for f in read_manifest(rl["lora"]).files}
    assert "pytorch_lora_weights.safetensors" in lora_files
    # the critic was audited during RL through the same reward endpoint (a held-out bench slice with human scores)
    # and the terminal shows that audit in one line; the deploy step printed its rollout decision (a fresh service:
    # no incumbent to bench against, so the critic serves as version 1)
    audit = rl["audit"]
    assert audit["step"] == summary["size"]["rl_steps"] - 1 and audit["n"] > 0 and audit["alarms"] == 0, audit
    assert 0 <= audit["mae"] <= 4 and audit["parse_failure_rate"] == 0, audit
    (audit_line,) = [ln for ln in err if ln.startswith("edit: critic audit during RL (after step ")]
    assert f"MAE {audit['mae']:.3g}" in audit_line and "0 alarm(s)" in audit_line, audit_line
    assert (
        by_task["deploy-reward-service"]["headline"]
        == "rollout: no incumbent: the critic serves as version 1"
    )
    rl_metrics = executor("rl-train")["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert 0.0 <= rl_metrics["reward_mean"] <= 1.0 and rl_metrics["reward_parse_failure_rate"] == 0.0
    assert (run_dir / "rl-train" / "curves").read_text().count("<img") == 3
    assert (run_dir / "eval-policy" / "samples").read_text().count("<img") == 2
    # the steps' pages for the KFP UI: SFT metrics, the bench report (HTML with pictures) and its markdown summary
    assert {"val_loss", "val_mae", "val_parse_rate"} <= set(critic["train_metrics"])
    bench_html = (run_dir / "bench-critic" / "report").read_text()
    assert bench_html.lstrip().lower().startswith("<!doctype html") and "<img" in bench_html
    assert "MAE" in (run_dir / "bench-critic" / "summary").read_text()
    # the exit handler stopped the run's tritonserver: no process serving from this FIRM_HOME, no service record
    from tests.pipelines.procs import tritonservers

    assert tritonservers(tmp_path / "home") == [], "the exit handler must stop the run's tritonserver"
    assert not list((tmp_path / "home" / "services").glob("*.json"))

    # the report: every link and picture resolves; the rerun commands are there
    index = Path(printed["report"])
    page = index.read_text()
    refs = re.findall(r'(?:href|src)="([^"#]+)"', page)
    local = [r for r in refs if not r.startswith(("data:", "http"))]
    assert len(local) >= 6
    for r in local:
        assert (index.parent / r).resolve().is_file(), r
    assert (
        "firmctl pipeline run firm --local" in page
        and "firmctl rl train --config rl/tiny_qwen_edit_nft" in page
    )
    assert edit["checks"]["stages_succeeded"]
