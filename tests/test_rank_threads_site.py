"""The rank thread recorder (tests/_rank_threads/sitecustomize.py) is put first on PYTHONPATH, where it shadows any
other sitecustomize: it runs that one too, so a rank starts as it would without the recorder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests._threads_after_main import recording_env


def test_the_recorder_runs_the_sitecustomize_it_shadows(tmp_path: Path) -> None:
    other = tmp_path / "other_site"
    other.mkdir()
    marker = tmp_path / "ran"
    (other / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = recording_env(tmp_path / "threads", {"PYTHONPATH": str(other), "RANK": "0"})
    proc = subprocess.run([sys.executable, "-c", "pass"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
    assert (tmp_path / "threads" / "rank-0.json").exists()  # and the recorder still recorded
