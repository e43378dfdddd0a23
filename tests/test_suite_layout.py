"""The suite's own scheduling: the files `tests/conftest.py` starts first must exist (a renamed file would silently
fall back to its place by name, and the suite's wall time with it)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LONGEST_FIRST

REPO = Path(__file__).resolve().parents[1]


def test_the_longest_files_started_first_exist() -> None:
    missing = [p for p in LONGEST_FIRST if not (REPO / p).is_file()]
    assert not missing, f"tests/conftest.py LONGEST_FIRST names files that do not exist: {missing}"
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)


def test_make_test_keeps_the_collection_order() -> None:
    """xdist's loadfile scheduler sorts files by their number of tests unless told not to."""
    assert "--dist loadfile --no-loadscope-reorder" in (REPO / "Makefile").read_text()
