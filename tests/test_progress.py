"""`firm.progress.Progress`: periodic one-line records when stderr is not a terminal, a bar when it is."""

from __future__ import annotations

import io
import time

import pytest

from firm.progress import Progress, progress_interval


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _wait_for_line(stream: _Stream, needle: str, timeout: float = 10.0) -> str:
    """The first line containing `needle`, once the background thread printed it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [ln for ln in stream.getvalue().splitlines() if needle in ln]
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no line with {needle!r}: {stream.getvalue()!r}")


def test_not_a_tty_prints_periodic_lines_with_step_rate_eta() -> None:
    stream = _Stream(tty=False)
    with Progress("rl nft run", total=10, interval=0.05, stream=stream) as p:
        first = _wait_for_line(stream, "step 0/10")
        assert first.startswith("progress: rl nft run: step 0/10 (0%), elapsed ")
        p.update(completed=4, info="reward 0.5")
        last = _wait_for_line(stream, "step 4/10")
    assert last.startswith("progress: rl nft run: step 4/10 (40%), ") and "step/s, ETA " in last, last
    assert last.endswith("| reward 0.5"), last
    closing = stream.getvalue().splitlines()[-1]
    assert "done in" in closing and "ETA" not in closing


def test_bytes_are_formatted_as_sizes() -> None:
    stream = _Stream(tty=False)
    with Progress("copying 3 file(s)", total=4 * 2**20, unit="B", interval=0.05, stream=stream) as p:
        p.advance(2**20)
        p.advance(2**20)
        line = _wait_for_line(stream, "2.0 MiB/4.0 MiB")
    assert line.startswith("progress: copying 3 file(s): 2.0 MiB/4.0 MiB (50%), "), line
    assert "MiB/s" in line


def test_short_work_prints_nothing_and_disabled_prints_nothing() -> None:
    stream = _Stream(tty=False)
    with Progress("quick", total=3, interval=60, stream=stream) as p:
        p.advance(3)
    assert stream.getvalue() == ""  # finished before the first interval: no closing line either
    with Progress("rank 1", total=3, interval=0.01, stream=stream, enabled=False) as p:
        time.sleep(0.05)
        p.advance(3)
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar_not_lines() -> None:
    stream = _Stream(tty=True)
    with Progress("bench", total=2, unit="items", interval=0.01, stream=stream) as p:
        time.sleep(0.05)
        p.advance(2)
    assert "progress:" not in stream.getvalue()


@pytest.mark.parametrize(("value", "expected"), [("", 30.0), ("2.5", 2.5), ("0", 0.0)])
def test_interval_from_environment(monkeypatch: pytest.MonkeyPatch, value: str, expected: float) -> None:
    monkeypatch.setenv("FIRM_PROGRESS_INTERVAL", value)
    assert progress_interval() == expected
