"""docs/paper-fidelity.md stays true: every test a row names exists, and every paper recipe links the page."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "paper-fidelity.md"
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]`]*\])?`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_named_test_exists() -> None:
    named = NAMED.findall(DOC.read_text())
    assert len(named) >= 40, "the table names the tests that pin each row"
    missing = [f"{f}::{t}" for f, t in named if not (REPO / f).is_file() or t not in _tests_in(REPO / f)]
    assert not missing, missing


def test_every_table_row_names_a_test() -> None:
    rows = [
        ln for ln in DOC.read_text().splitlines() if ln.startswith("| ") and not ln.startswith("| behaviour")
    ]
    assert rows and all(NAMED.search(row.rsplit("|", 2)[-2]) for row in rows), [
        row[:80] for row in rows if not NAMED.search(row.rsplit("|", 2)[-2])
    ]


def test_paper_recipes_link_the_fidelity_page() -> None:
    recipes = [
        p for p in sorted((REPO / "firm" / "recipes").glob("*/*.yaml")) if not p.name.startswith("tiny")
    ]
    assert recipes
    unlinked = [p.name for p in recipes if "docs/paper-fidelity.md" not in p.read_text()]
    assert not unlinked, unlinked
