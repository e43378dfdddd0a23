"""`firmctl quickstart` end to end: every stage on tiny models, the trained critic must beat chance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firm.storage import latest, read_manifest


@pytest.mark.slow
def test_quickstart_trains_a_critic_that_beats_chance_and_serves_it(tmp_path: Path) -> None:
    env = {**os.environ, "FIRM_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    for key in [k for k in env if k.startswith("FIRM_") and k != "FIRM_HOME"]:
        del env[key]  # the embedded default: a local store under FIRM_HOME
    proc = subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "quickstart", "--workdir", str(tmp_path / "qs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout holds exactly one JSON document

    # curate: the dataset is a published directory in the local store
    assert result["dataset"].startswith((tmp_path / "home" / "store").as_uri())
    assert read_manifest(result["dataset"]).files
    # train: checkpoints published, the newest complete one is the final step, and the export loads as a critic
    assert result["checkpoints"], "no checkpoint was published"
    assert latest(result["checkpoints"][0].rsplit("/", 1)[0]) == result["checkpoints"][-1]
    assert result["final_eval"]["val/parse_rate"] >= 0.9
    # bench: the trained critic beats the random and the untrained critic on held-out items
    mae = result["bench_mae"]
    assert mae["trained"] < mae["random"] and mae["trained"] < mae["untrained"], mae
    assert (tmp_path / "qs" / "bench-results" / "trained" / "report.md").is_file()
    # serve: rewards came back through tritonserver for every edit, with explicit statuses
    rewards = result["rewards"]
    assert len(rewards) == len(result["expected_execution"]) == 6
    ok = [r for r in rewards if r["status"] == "ok"]
    assert len(ok) >= 4, rewards
    assert all(0.0 <= r["reward"] <= 1.0 for r in ok)
    # the served critic's execution scores track the known answers
    err = [
        abs((1 + 4 * r["execution"]) - truth)
        for r, truth in zip(rewards, result["expected_execution"], strict=True)
        if r["execution"] is not None
    ]
    assert sum(err) / len(err) < 1.5, err
