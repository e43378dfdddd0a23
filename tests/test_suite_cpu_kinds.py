"""`benchmarks/suite_cpu.py` names each process of a suite run by what it was (its tables group CPU by that name):
the command lines below are the ones a suite run starts (read from /proc during `make bench`)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "suite_cpu.py"


@functools.cache  # loaded once for all cases
def _script():
    spec = importlib.util.spec_from_file_location("suite_cpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _kind():
    return _script().kind


@pytest.mark.parametrize(
    ("cmd", "name"),
    [
        ("/v/bin/python -c from multiprocessing... exec(eval(sys.stdin.readline()))",
         "pytest-xdist worker (in-process tests)"),
        ("/v/bin/python -m kfp.dsl.executor_main --component_module_path /t/x.py --executor_input {}",
         "KFP local-runner step"),
        ("/v/bin/python -u -m firm.launch.rank_main -m firm.critic.sft --config c.yaml",
         "local-job rank (firm.critic.sft)"),
        ("/v/bin/python -m firm.critic.sft --config c.yaml", "python -m firm.critic.sft"),
        ("/v/bin/python /v/bin/firmctl rl train --config c.yaml", "firmctl rl"),
        ("/v/bin/firmctl job submit --config c.yaml", "firmctl job"),
        ("/o/tritonserver --model-repository /r", "tritonserver"),
        ("/o/triton_python_backend_stub /r/firm_engine/1/model.py", "Triton Python stub"),
        ("/v/bin/python -c import torch", "python -c"),
    ],
)  # fmt: skip
def test_each_process_of_a_suite_run_is_named_by_what_it_was(cmd: str, name: str) -> None:
    assert _kind()(cmd) == name


def test_a_subprocess_counts_for_its_test_whatever_the_phase() -> None:
    """The per-test table: setup, call and teardown of one test are one row (a parametrized id may hold " ("), the
    file table is its prefix, and pytest's own processes belong to no test."""
    m = _script()
    worker = "/v/bin/python -c from multiprocessing... exec(eval(sys.stdin.readline()))"
    rank = "/v/bin/python -m firm.critic.sft --config c.yaml"

    def proc(pid: int, cmd: str, test: str):
        return m.Proc(pid=pid, ppid=1, cmd=cmd, test=test, marked=True, cpu=1.0)

    t = "tests/x/test_a.py::test_b[f (g)]"
    procs = [proc(2, rank, f"{t} (setup)"), proc(3, rank, f"{t} (call)"), proc(4, rank, f"{t} (teardown)"),
             proc(5, rank, ""), proc(6, worker, f"{t} (call)"), proc(1, rank, "")]  # fmt: skip
    assert [m.owning_test(p, main_pid=1) for p in procs] == [t, t, t, m.OUTSIDE_A_TEST, None, None]
    assert m.tally(procs, lambda p: m.owning_test(p, 1)) == [(t, 3, 3.0), (m.OUTSIDE_A_TEST, 1, 1.0)]
