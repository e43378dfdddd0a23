"""Shared pytest configuration. Fixtures live in tests/fixtures/ (one module per kind of resource).

The tiny models used here are far too small to gain from intra-op threads: on this 2-core machine one torch thread
per process is several times faster than two (measured, see BENCHMARKS.md), and the servers and torchrun workers
that tests start inherit the setting through OMP_NUM_THREADS.
"""

import os

from hypothesis import settings

# Property tests explore freely on developers' machines; under CI (`CI=true`, set by .ci/run) they draw the same
# examples on every run, so a red CI always reproduces. Bugs found locally become fixed `@example`s.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
    settings.load_profile("ci")

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.models", "tests.fixtures.home"]
