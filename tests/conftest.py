"""Shared pytest configuration. Fixtures live in tests/fixtures/ (one module per kind of resource).

The tiny models used here are far too small to gain from intra-op threads: on this 2-core machine one torch thread
per process is several times faster than two (measured, see BENCHMARKS.md), and the servers and torchrun workers
that tests start inherit the setting through OMP_NUM_THREADS.
"""

import os
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Property tests explore freely on developers' machines; under CI (`CI=true`, set by .ci/run) they draw the same
# examples on every run, so a red CI always reproduces. Bugs found locally become fixed `@example`s.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
    settings.load_profile("ci")

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# FIRM compiles nothing (no torch.compile anywhere in firm/), but importing DeepSpeed's ZeRO optimizers (0.19) applies
# `@torch.compile` to its Muon kernels, which imports TorchInductor in every DeepSpeed process: ~1 CPU-second each on
# this 2-core machine, for code the tests never run. With dynamo disabled torch.compile returns the function as is;
# the suite's DeepSpeed runs took 17 % less CPU (tests/sft/test_deepspeed_resume.py, benchmarks/notes/test-suite.md).
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.models", "tests.fixtures.home"]


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_under_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What the suite's processes leave in the temporary directory goes under pytest's own numbered base directory
    (pytest keeps the last 3 runs), not into /tmp for good: mostly from libraries — the KFP local runner's component
    files, a `torchelastic_*` log tree from each plain torchrun a test starts itself (FIRM's launches make none:
    `firm.launch.torchrun_quiet.no_log_files`) — and the logs of the Triton starts that tests make fail on purpose (a
    failed start keeps its log, by design). Every process the tests start inherits TMPDIR; this process's `tempfile`
    reads it again. One thing ignores TMPDIR: Triton's python backend makes an empty `/tmp/python_env_*` directory (a
    fixed path) per server and removes it on a clean stop; a tritonserver that exits on a start error
    (tests/serving/test_server_start.py's port taken under it) leaves that one behind."""
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmp", numbered=False))
    tempfile.tempdir = None
    yield


# The suite runs on 2 pytest-xdist workers with whole files per worker (`--dist loadfile --no-loadscope-reorder`:
# files are handed out in collection order; by default xdist sorts them by their number of tests, which put the
# one-test quickstart file last). Collected by name, the longest files came last and one worker ran them alone while
# the other sat idle; starting the longest first (longest-processing-time-first) leaves only short files for the end. Durations
# measured with `pytest --durations` (benchmarks/notes/test-suite.md); a file not listed keeps its place after these.
LONGEST_FIRST = [
    "tests/test_quickstart.py",
    "tests/sft/test_deepspeed_resume.py",
    "tests/sft/test_train.py",
    "tests/pipelines/test_local_runs.py",
    "tests/launch/test_local_backend.py",
    "tests/launch/test_reward_service_rollout.py",
    "tests/serving/test_rollout.py",
    "tests/rl/test_distributed_cli.py",
    "tests/rl/test_checkpoint.py",
    "tests/rl/test_qwen_edit.py",
    "tests/rl/test_parity.py",
    "tests/rl/test_learning.py",
    "tests/deploy/test_checkov.py",
    "tests/test_documented_commands.py",
    "tests/serving/test_service.py",
    "tests/curation/test_gen_import_train.py",
]


def pytest_collection_modifyitems(session, config, items) -> None:  # type: ignore[no-untyped-def]
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = config.rootpath

    def key(item) -> int:  # type: ignore[no-untyped-def]
        return rank.get(item.path.relative_to(root).as_posix(), len(rank))

    items.sort(key=key)  # stable: tests keep their order inside a file, other files their collection order
