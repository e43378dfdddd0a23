"""Safe critic rollout on the real tritonserver (`firm.launch.rollout`): one local reward service started by
`start_service` on a live repository, a format-taught candidate promoted over an untrained incumbent, an untrained
candidate refused while the promoted critic keeps serving, a rollback restoring the previous scores — and a client
scoring edits all along that sees no failed request. History lands in the (moto) object store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.conftest import MAX_NEW_TOKENS, MAX_PIXELS

SERVICE = "rollout-test"


def _export(critic: Path, out: Path) -> str:
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository

    cfg = ExportConfig(
        critic=str(critic),
        task="edit",
        max_new_tokens=MAX_NEW_TOKENS,
        max_pixels=MAX_PIXELS,
        threads=1,
        batching=BatchingConfig(max_batch_size=8, preferred_batch_sizes=[4, 8], max_queue_delay_us=5000),
    )
    return export_repository(cfg, out)


@pytest.fixture(scope="module")
def repos(
    serving_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, tiny_critic_dir: Path,
    formatted_critic_dir: Path,
) -> dict[str, str]:  # fmt: skip
    from firm.storage import init_buckets

    init_buckets()  # the models bucket holds the rollout history
    root = tmp_path_factory.mktemp("rollout")
    return {
        "untrained": _export(tiny_critic_dir, root / "untrained"),
        "formatted": _export(formatted_critic_dir, root / "formatted"),
    }


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> str:
    from firm.bench.synthetic import make_synthetic_bench

    out = tmp_path_factory.mktemp("audit")
    make_synthetic_bench(out, 4, seed=3, size=48, n_gen=0, requested=4)
    return str(out)


@pytest.fixture(scope="module")
def service(repos: dict[str, str]) -> Iterator[object]:
    from firm.serving.service import start_service, stop_service

    rec = start_service(SERVICE, repos["untrained"], startup_timeout=300)
    yield rec
    stop_service(SERVICE)


class Load:
    """A client scoring one edit at a time until stopped (light: the audits share these CPUs); counts successes and
    failures. The C=16 load across a promotion is measured in benchmarks/critic_rollout.py."""

    def __init__(self, grpc: str, image: object) -> None:
        from firm.serving.client import RewardClient

        self.client = RewardClient(grpc, timeout=120)
        self.items = [(image, image, "add a red square")]
        self.ok = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.client.score_edit(self.items)
                self.ok += 1
                self.stop.wait(0.5)
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=300)
        self.client.close()


def test_promote_refuse_rollback_without_a_failed_request(
    service: object, repos: dict[str, str], audit: str
) -> None:
    from PIL import Image

    from firm.bench.loaders import load_bench
    from firm.launch.rollout import RolloutRefused, audit_scores, history, rollback, rollout

    bench = load_bench(audit)
    grpc = service.grpc  # type: ignore[attr-defined]
    before = audit_scores(grpc, bench)
    assert (
        before.parse_failure_rate == 1.0 and before.mae is None
    )  # the untrained critic's answers never parse

    with Load(grpc, Image.new("RGB", (32, 32), "white")) as load:
        promoted = rollout(SERVICE, repos["formatted"], audit, margin=0.5, who="tester")
        assert promoted.promoted and promoted.version == 2 and promoted.previous == 1
        assert promoted.candidate.parse_failure_rate < 1.0 and promoted.incumbent == before
        served = audit_scores(grpc, bench)
        assert served == promoted.candidate, "the public models now serve the promoted critic"

        with pytest.raises(
            RolloutRefused, match=r"candidate refused: parse-failure rate is higher"
        ) as refused:
            rollout(SERVICE, repos["untrained"], audit, margin=0.5, who="tester")
        assert refused.value.decision.version == 2 and refused.value.decision.incumbent == served
        assert audit_scores(grpc, bench) == served, "the incumbent keeps serving"
        live = Path(service.live)  # type: ignore[attr-defined]
        assert not any(p.name.endswith("_candidate") for p in live.iterdir()), (
            "the refused candidate is removed"
        )

        back = rollback(SERVICE, who="tester")
        assert (back.version, back.previous) == (1, 2)
        assert audit_scores(grpc, bench) == before, "rollback restores the previous critic's scores"
    assert load.errors == [] and load.ok > 0

    events = history(SERVICE)
    assert [(e.action, e.version) for e in events] == [("promote", 2), ("refuse", 2), ("rollback", 1)]
    assert events[0].who == "tester" and events[0].candidate_scores == promoted.candidate
    with pytest.raises(Exception, match="nothing to roll back to"):
        rollback(SERVICE)
