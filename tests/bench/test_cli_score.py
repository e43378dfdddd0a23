"""`firmctl bench score`: the public contract (keys, values, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firm.cli.main import app

HUMAN = [
    {"id": "x1", "task": "edit", "axis": "execution", "difficulty": None, "human_score": 5},
    {"id": "x2", "task": "edit", "axis": "execution", "difficulty": None, "human_score": 2},
    {"id": "c1", "task": "edit", "axis": "consistency", "difficulty": None, "human_score": 4},
    {"id": "g1", "task": "gen", "axis": "instruction", "difficulty": "easy", "human_score": 3},
    {"id": "g2", "task": "gen", "axis": "instruction", "difficulty": "hard", "human_score": 1},
    {"id": "g3", "task": "gen", "axis": "instruction", "difficulty": "hard", "human_score": 4},
]
PRED = [
    {"id": "x1", "score": 4},
    {"id": "x2", "score": None},  # parse failure
    {"id": "c1", "score": 4},
    {"id": "g1", "score": 3},
    {"id": "g2", "score": 2},
    {"id": "g3", "score": 1},
]
KEYS = {"mae", "n", "accuracy", "within1", "pearson", "spearman", "bias", "ci95", "parse_failures"}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _score(tmp_path: Path, pred: list[dict], human: list[dict] = HUMAN, *extra: str):  # type: ignore[no-untyped-def]
    p = _write(tmp_path / "P.jsonl", pred)
    h = _write(tmp_path / "H.jsonl", human)
    return CliRunner().invoke(app, ["bench", "score", "--predictions", str(p), "--human", str(h), *extra])


def test_score_prints_report_json(tmp_path: Path) -> None:
    res = _score(tmp_path, PRED)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for task, groups in (
        ("edit", ("execution", "consistency", "overall")),
        ("gen", ("easy", "hard", "overall")),
    ):
        for g in groups:
            assert set(doc[task][g]) >= KEYS, (task, g)
    # worst policy: x2 (human 2, no answer) → 5, error 3; x1 error 1 → execution MAE 2
    assert doc["edit"]["execution"]["mae"] == pytest.approx(2.0)
    assert doc["edit"]["execution"]["parse_failures"] == 1
    assert doc["edit"]["consistency"]["mae"] == pytest.approx(0.0)
    assert doc["edit"]["overall"]["mae"] == pytest.approx(4 / 3, abs=1e-6)  # pooled (1+3+0)/3
    assert doc["gen"]["easy"]["mae"] == pytest.approx(0.0)
    assert doc["gen"]["hard"]["mae"] == pytest.approx(2.0)  # (1 + 3) / 2
    assert doc["gen"]["overall"]["mae"] == pytest.approx(4 / 3, abs=1e-6)
    assert doc["gen"]["easy"]["pearson"] is None  # one item: undefined → null
    lo, hi = doc["gen"]["overall"]["ci95"]
    assert lo <= doc["gen"]["overall"]["mae"] <= hi
    assert doc["meta"]["parse_failure_policy"] == "worst"


def test_score_exclude_policy(tmp_path: Path) -> None:
    res = _score(tmp_path, PRED, HUMAN, "--parse-failure", "exclude")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["edit"]["execution"]["mae"] == pytest.approx(1.0)
    assert doc["edit"]["execution"]["n"] == 1 and doc["edit"]["execution"]["parse_failures"] == 1
    assert _score(tmp_path, PRED, HUMAN, "--parse-failure", "skip").exit_code == 1


def test_empty_groups_are_null(tmp_path: Path) -> None:
    res = _score(tmp_path, PRED[:3], HUMAN[:3])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["gen"] == {"easy": None, "hard": None, "overall": None}


@pytest.mark.parametrize(
    ("pred", "human", "message"),
    [
        (PRED[:-1], HUMAN, r"1 id\(s\) without a prediction: g3"),
        ([*PRED, {"id": "zz", "score": 3}], HUMAN, r"1 id\(s\) without a human score: zz"),
        ([{**PRED[0], "score": 6}, *PRED[1:]], HUMAN, r"P.jsonl:1: score"),
        (PRED, [*HUMAN[:2], {**HUMAN[2], "human_score": 0}, *HUMAN[3:]], r"H.jsonl:3: human_score"),
        (PRED, [*HUMAN[:1], {**HUMAN[1], "axis": "instruction"}, *HUMAN[2:]], r"H.jsonl:2: .*axis"),
        ([*PRED, PRED[0]], HUMAN, r"P.jsonl:7: duplicate id 'x1'"),
        # a row that omits its score is not a silent parse failure; booleans/strings are not scores
        ([PRED[0], {"id": "x2"}, *PRED[2:]], HUMAN, r"P.jsonl:2: no 'score'"),
        ([{**PRED[0], "score": True}, *PRED[1:]], HUMAN, r"P.jsonl:1: score: .*integer 1..5"),
        ([{**PRED[0], "score": "4"}, *PRED[1:]], HUMAN, r"P.jsonl:1: score: .*integer 1..5"),
        (PRED, [{**HUMAN[0], "human_score": "5"}, *HUMAN[1:]], r"H.jsonl:1: human_score: .*integer"),
    ],
)
def test_score_bad_inputs(tmp_path: Path, pred: list[dict], human: list[dict], message: str) -> None:
    res = _score(tmp_path, pred, human)
    assert res.exit_code == 1
    assert res.stdout == ""
    import re

    assert re.search(message, res.stderr), res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "P.jsonl"
    p.write_text(json.dumps(PRED[0]) + "\n\n" + '{"id": "x2", "score": \n')
    h = _write(tmp_path / "H.jsonl", HUMAN)
    res = CliRunner().invoke(app, ["bench", "score", "--predictions", str(p), "--human", str(h)])
    assert res.exit_code == 1
    assert f"{p}:3: malformed JSON" in res.stderr
    res = CliRunner().invoke(
        app, ["bench", "score", "--predictions", str(tmp_path / "nope.jsonl"), "--human", str(h)]
    )
    assert res.exit_code == 1 and "nope.jsonl" in res.stderr
