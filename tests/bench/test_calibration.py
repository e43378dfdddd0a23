"""Calibration of the critic's confidence in the bench: deciles, selective MAE, AURC, report and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firm.bench.calibration import calibration_metrics, selective_mae
from firm.bench.metrics import compute_report
from firm.bench.records import HumanScore
from firm.bench.report import write_report


def test_informative_confidence_lowers_selective_mae() -> None:
    human = [3] * 10
    predicted = [3, 3, 3, 3, 3, 5, 1, 5, 1, None]  # the last did not parse
    confidence = [0.9, 0.95, 0.8, 0.85, 0.9, 0.3, 0.2, 0.25, 0.3, None]
    c = calibration_metrics(human, predicted, confidence)
    assert c is not None and c.n == 9 and c.n_without == 1
    assert c.selective_mae["50"] == 0.0 and c.selective_mae["100"] == pytest.approx(8 / 9)
    assert c.selective_mae["80"] < c.selective_mae["100"]
    assert c.aurc < c.selective_mae["100"]
    assert c.deciles[0].mae == 2.0 and c.deciles[-1].mae == 0.0 and c.deciles[-1].accuracy == 1.0
    assert c.curve[-1] == [1.0, pytest.approx(8 / 9, abs=1e-6)]
    # a constant confidence ranks nothing: every coverage keeps items in bench order
    flat = calibration_metrics(human, predicted, [0.5] * 10)
    assert flat is not None and flat.mean_confidence == 0.5
    assert selective_mae([0, 2], [0.5, 0.5], 0.5) == 0.0  # ties: bench order
    assert calibration_metrics(human, predicted, [None] * 10) is None


def test_report_carries_calibration_in_json_markdown_html_and_plots(tmp_path: Path) -> None:
    humans = [
        HumanScore(id=f"e{i}", task="edit", axis="execution", human_score=1 + i % 5) for i in range(20)
    ] + [
        HumanScore(id=f"g{i}", task="gen", axis="instruction", difficulty="easy", human_score=3)
        for i in range(5)
    ]
    preds = {h.id: h.human_score if i % 3 else 5 for i, h in enumerate(humans)}
    conf = {h.id: (0.9 if i % 3 else 0.2) for i, h in enumerate(humans)}
    report = compute_report(humans, preds, confidences=conf, n_boot=10)
    assert set(report.calibration) == {"edit.execution", "gen.instruction"}
    flat = report.flat_metrics()
    assert flat["selective_mae_80/edit/execution"] < flat["selective_mae_100/edit/execution"]
    assert "aurc/gen/instruction" in flat and "confidence_mean/edit/execution" in flat
    files = write_report(report, tmp_path, critic="c")
    assert files["calibration.png"].read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((tmp_path / "report.json").read_text())
    assert (
        doc["calibration"]["edit.execution"]["selective_mae"]["80"] == flat["selective_mae_80/edit/execution"]
    )
    assert "## Calibration" in (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Calibration</h2>" in page and "calibration.png" in page
    # without confidences: no calibration section, no plot
    plain = compute_report(humans, preds, n_boot=10)
    assert plain.calibration == {}
    files = write_report(plain, tmp_path / "plain", critic="c")
    assert (
        "calibration.png" not in files
        and "Calibration" not in (tmp_path / "plain" / "report.html").read_text()
    )
