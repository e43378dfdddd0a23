"""Critic audit and reward-hacking alarms during RL (issue 29, part 1).

A tiny Qwen-Image-Edit run scored by an in-process fake critic: the *hacking* critic rewards edits for looking like
their source (execution = similarity to the source), the *honest* one for changing it (execution = 1 − similarity).
The tiny random VAE cannot reproduce its source in a few CPU steps (similarity stays ≈ 0.6), so these tests lower
`audit.identity_similarity` to 0.5: every rollout is then a near-copy, and whether it counts as hacking is the critic's
doing — the hacking critic rewards the copies, the honest one scores them low. Everything else is the real trainer,
checkpoints, entrypoint and local job status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from firm.schemas import Confidence, RewardBreakdown


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from firm.rl.policies.tiny import build_tiny_qwen_edit

    return build_tiny_qwen_edit(tmp_path_factory.mktemp("tiny-qwen-audit") / "pipe")


class FakeCritic:
    """An in-process edit critic: execution from the similarity of the edit to its source, consistency 5."""

    task = "edit"

    def __init__(self, rewards_copies: bool) -> None:
        self.rewards_copies = rewards_copies
        self.calls = 0

    def __call__(self, items: Sequence[Any]) -> list[RewardBreakdown]:
        from firm.rl.monitor import source_similarity

        self.calls += 1
        out = []
        for it in items:
            sim = float(source_similarity(it.image[None], it.source[None])[0])
            e = sim if self.rewards_copies else 1.0 - sim
            why = "looks just like the source" if self.rewards_copies else "the edit changed the image"
            out.append(
                RewardBreakdown(
                    task="edit",
                    formulation="cme",
                    reward=e,
                    status="ok",
                    execution=e,
                    consistency=1.0,
                    raw_scores={"execution": 1 + 4 * e, "consistency": 5.0},
                    reasoning={"execution": why},
                    confidence=Confidence(
                        p=0.8, entropy=0.5, std=0.4, axes={"execution": 0.9, "consistency": 0.9}
                    ),
                )
            )
        return out


def _audit_bench(root: Path) -> Path:
    """Four edit items scored on execution: two identity copies (humans: 1) and two real edits (humans: 5)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (src, edited, human) in enumerate(
        [((20, 20, 200), (20, 20, 200), 1), ((200, 20, 20), (200, 20, 20), 1),
         ((20, 20, 200), (240, 240, 20), 5), ((20, 200, 20), (250, 20, 250), 5)]
    ):  # fmt: skip
        Image.new("RGB", (32, 32), src).save(root / f"s{i}.png")
        Image.new("RGB", (32, 32), edited).save(root / f"e{i}.png")
        rows.append({"id": f"a{i}:execution", "task": "edit", "axis": "execution", "human_score": human,
                     "images": [f"s{i}.png", f"e{i}.png"], "instruction": "make it yellow"})  # fmt: skip
    (root / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _cfg(tiny_qwen: Path, tmp_path: Path, steps: int, **audit: Any) -> dict[str, Any]:
    from firm.rl.policies.tiny import write_edit_prompts

    return {
        "name": "audit-test",
        "task": "edit",
        "output_uri": str(tmp_path / "out"),
        "steps": steps,
        "device": "cpu",
        "policy": {
            "kind": "qwen_edit",
            "uri": str(tiny_qwen),
            "resolution": 32,
            "max_sequence_length": 96,
            "condition_pixels": 56 * 56,
            "prompt_template_drop": 0,
        },
        "lora": {"rank": 4, "alpha": 8},
        "sampling": {"num_steps": 3, "group_size": 4, "prompts_per_step": 2, "eval_num_steps": 2},
        "optim": {"lr": 1e-2},
        "reward": {"kind": "brightness", "async_overlap": False, "retries": 0, "retry_backoff_s": 0},
        "data": {"prompts": str(write_edit_prompts(tmp_path / "edits/prompts.jsonl"))},
        "checkpoint": {"every_steps": 1000},
        "monitor": {"tensorboard": False},
        "audit": {
            "bench": str(_audit_bench(tmp_path / "bench")),
            "every_steps": 2,
            "alarm": "stop",
            "identity_similarity": 0.5,
            **audit,
        },
    }


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "run/metrics.jsonl").read_text().splitlines() if ln.strip()]


def test_honest_critic_run_finishes_with_audits_at_the_configured_steps(
    tiny_qwen: Path, tmp_path: Path
) -> None:
    from firm.rl.config import config_from_dict
    from firm.rl.trainer import Trainer

    critic = FakeCritic(rewards_copies=False)
    trainer = Trainer(config_from_dict(_cfg(tiny_qwen, tmp_path, steps=5)), reward=critic)
    results = trainer.train(progress=False)
    assert len(results) == 5 and not trainer.alarms.fired
    rows = _rows(tmp_path / "out")
    audited = [r["step"] for r in rows if "audit/mae" in r]
    assert audited == [1, 3, 4]  # after every 2 steps, and after the last one
    for r in rows:
        if "audit/mae" not in r:
            continue
        # the honest critic: copies score 1 (human 1), the two real edits ≥ 4 (human 5)
        assert r["audit/n"] == 4 and r["audit/parse_failure_rate"] == 0.0
        assert r["audit/mae"] <= 0.5 and r["audit/confidence_mean"] == pytest.approx(0.9)
        assert r["time/audit"] > 0 and r["alarms/fired"] == 0
    assert all(r["hacking/identity_rate"] == 0.0 for r in rows)
    gallery = (tmp_path / "out/audit/gallery.html").read_text()
    assert "a2:execution" in gallery and "the edit changed the image" in gallery and "human 5" in gallery
    assert (tmp_path / "out/final/lora").is_dir() and not (tmp_path / "out/alarm.json").exists()
    from typer.testing import CliRunner

    from firm.cli.main import app

    res = CliRunner().invoke(app, ["rl", "report", str(tmp_path / "out"), "--out", str(tmp_path / "g.html")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "completed" and doc["alarm"] is None and doc["last_audit"]["step"] == 4


def test_hacking_critic_is_stopped_by_the_identity_alarm(tiny_qwen: Path, tmp_path: Path) -> None:
    from firm.rl.alarms import AlarmStop
    from firm.rl.checkpoint import load_checkpoint
    from firm.rl.config import config_from_dict
    from firm.rl.trainer import Trainer

    trainer = Trainer(
        config_from_dict(_cfg(tiny_qwen, tmp_path, steps=5)), reward=FakeCritic(rewards_copies=True)
    )
    with pytest.raises(AlarmStop) as err:
        trainer.train(progress=False)
    alarm = err.value.alarm
    # every sample is a rewarded near-copy from step 0; patience 2 → the alarm fires at step 1
    assert alarm.name == "identity_copies" and alarm.step == 1
    assert alarm.evidence["identity_rate"] > 0.25 and alarm.evidence["steps"] == 2
    assert "stopped_by_alarm: identity_copies alarm at step 1" in str(err.value)
    # the last good state is the run's start (its rollouts were already flagged): published as step 0
    out = tmp_path / "out"
    assert err.value.checkpoint == str(out / "checkpoints/step-00000000")
    assert load_checkpoint(err.value.checkpoint).step == 0
    assert not (out / "final").exists()  # the hacked weights are not exported
    record = json.loads((out / "alarm.json").read_text())
    assert record["status"] == "stopped_by_alarm" and record["alarm"]["evidence"]["step"] == 1
    rows = _rows(out)
    assert [r["step"] for r in rows] == [0, 1] and rows[1]["alarms/fired"] == 1
    # the hacking critic scores the audit's copies 5 and its real edits 1: the audit shows it
    assert rows[1]["audit/mae"] >= 3.0
    gallery = (out / "audit/gallery.html").read_text()
    assert "Samples the alarms flagged" in gallery and "looks just like the source" in gallery
    assert "identity_copies" in gallery and "similarity to the source" in gallery

    # `firmctl rl report` writes the gallery locally and says how the run ended, with the evidence
    from typer.testing import CliRunner

    from firm.cli.main import app

    res = CliRunner().invoke(app, ["rl", "report", str(out), "--out", str(tmp_path / "g.html")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "stopped_by_alarm" and doc["alarm"]["name"] == "identity_copies"
    assert doc["last_audit"]["step"] == 1 and doc["last_audit"]["audit/mae"] >= 3.0
    assert (tmp_path / "g.html").read_text() == gallery


def test_entrypoint_exits_with_the_alarm_code(
    tiny_qwen: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m firm.rl.train` (what a job runs): exit code ALARM_EXIT_CODE, one `error:` line, and the summary's
    status `stopped_by_alarm` with the evidence."""
    import io

    import yaml

    from firm.rl import train, trainer
    from firm.rl.alarms import ALARM_EXIT_CODE

    monkeypatch.setattr(trainer, "build_reward", lambda cfg, task: FakeCritic(rewards_copies=True))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_cfg(tiny_qwen, tmp_path, steps=4)))
    out = io.StringIO()
    code = train.main(["--config", str(recipe)], stdout=out)
    assert code == ALARM_EXIT_CODE == 4
    summary = json.loads(out.getvalue())
    assert summary["status"] == "stopped_by_alarm" and summary["alarm"]["name"] == "identity_copies"
    assert summary["checkpoint"].endswith("checkpoints/step-00000000")


def test_local_job_status_names_the_alarm_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from firm.launch import local_backend

    assert local_backend._reason(4) == "stopped_by_alarm"
    assert local_backend._reason(1) is None and local_backend._reason(None) is None


def test_alarm_rules() -> None:
    """The trend alarms: a sub-score collapsing while the reward rises; the audit MAE worsening while it rises."""
    from firm.rl.alarms import Alarms
    from firm.rl.config import AuditConfig

    a = Alarms(AuditConfig(window=4, subscore_drop=0.3, patience=2), "edit")
    for step, (r, e) in enumerate([(0.4, 0.8), (0.45, 0.8), (0.6, 0.3), (0.7, 0.2)]):
        fired = a.check_step(step, {"reward/mean": r, "reward/execution": e, "reward/consistency": 0.5})
    assert [f.name for f in fired] == ["subscore_collapse"] and fired[0].evidence["sub_score"] == "execution"
    assert not a.check_step(
        4, {"reward/mean": 0.7, "reward/execution": 0.2, "reward/consistency": 0.5}
    )  # once
    assert not a.check_audit(4, {"audit/mae": 0.5})  # the first audit is the baseline
    a.check_step(5, {"reward/mean": 0.9})
    fired = a.check_audit(5, {"audit/mae": 0.9})
    assert [f.name for f in fired] == ["reward_up_mae_worse"] and fired[0].evidence["mae_to"] == 0.9
    # zero variance and parse failures need `patience` steps in a row
    b = Alarms(AuditConfig(patience=2), "gen")
    assert not b.check_step(0, {"groups/zero_std_ratio": 1.0, "reward/parse_failure_rate": 0.6})
    assert {
        f.name for f in b.check_step(1, {"groups/zero_std_ratio": 1.0, "reward/parse_failure_rate": 0.6})
    } == {
        "zero_variance",
        "parse_failures",
    }


def test_torchrun_passes_the_alarm_exit_code_through(tmp_path: Path) -> None:
    """A job's ranks exit with ALARM_EXIT_CODE: torchrun_quiet (every job's launcher) keeps it instead of the generic
    1, so the job's exit code says `stopped_by_alarm` (and stays below 128: no restart)."""
    import os

    from firm.launch.local import run_local

    (tmp_path / "alarm_worker.py").write_text(
        "import sys\nprint('error: stopped_by_alarm: identity_copies alarm at step 1', file=sys.stderr)\nsys.exit(4)\n"
    )
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    assert run_local("alarm_worker", [], nproc=2, env={"PYTHONPATH": path}) == 4
