"""Which repository a cluster reward pod serves (`firm.launch.rollout.resolve_repository`, the chart's init container
`firmctl serve resolve-repository`): the promoted critic `current.json` names, else the annotated repository — unless
that was deployed after the promotion. Against moto S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

SERVICE = "firm-reward-edit"


@pytest.fixture
def models(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The models bucket (a fresh one per test) as a URI."""
    from firm.config import get_settings
    from firm.storage import S3Store

    monkeypatch.setenv("FIRM_MODELS_BUCKET", s3_env["bucket"])
    settings = get_settings(fresh=True)
    S3Store.from_settings(s3_env["bucket"], settings).make_bucket()
    assert settings.bucket_uris()["models"] == f"s3://{s3_env['bucket']}"
    return f"s3://{s3_env['bucket']}"


def _pointer(models: str, body: bytes) -> None:
    from firm.storage import write_bytes

    write_bytes(f"{models}/reward-service/{SERVICE}/current.json", body)


def _promote(models: str, repository: str | None, when: str = "2025-06-01T12:00:00.000000+00:00") -> None:
    """What `firm.launch.rollout.record` writes for a promotion."""
    from firm.launch.rollout import HistoryEntry, record

    entry = HistoryEntry(action="promote", service=SERVICE, who="t@h", when=when, version=2, previous=1)
    record(entry, repository=repository)


def test_without_a_promotion_the_annotated_repository_serves(models: str) -> None:
    from firm.launch.rollout import resolve_repository

    assert resolve_repository(SERVICE, "s3://m/annotated") == "s3://m/annotated"


def test_a_promotion_wins_over_the_annotation_until_a_later_deploy(models: str) -> None:
    from firm.launch.rollout import resolve_repository

    _promote(models, "s3://m/promoted")
    assert resolve_repository(SERVICE, "s3://m/annotated") == "s3://m/promoted"
    # restarts, scale-ups and upgrades keep (or have no) deployed-at older than the promotion: it still wins
    assert resolve_repository(SERVICE, "s3://m/annotated", deployed_at="2025-05-01T00:00:00+00:00") == (
        "s3://m/promoted"
    )
    assert resolve_repository(SERVICE, "s3://m/annotated", deployed_at="") == "s3://m/promoted"
    # the deploy step (or an upgrade naming a new repository) after the promotion: the annotation wins
    assert resolve_repository(SERVICE, "s3://m/annotated", deployed_at="2025-07-01T00:00:00Z") == (
        "s3://m/annotated"
    )
    # no repository annotated (the chart's first install): the promotion serves whatever the time
    assert resolve_repository(SERVICE, "", deployed_at="2025-07-01T00:00:00Z") == "s3://m/promoted"


def test_a_pointer_without_a_repository_falls_back_to_the_annotation(models: str) -> None:
    from firm.launch.rollout import resolve_repository

    _promote(models, None)
    assert resolve_repository(SERVICE, "s3://m/annotated") == "s3://m/annotated"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (json.dumps({"repository": 3}).encode(), "repository must be a non-empty string"),
        (json.dumps({"repository": "s3://m/p", "when": "yesterday"}).encode(), "when: not an ISO 8601 time"),
    ],
    ids=["json", "object", "repository", "when"],
)
def test_a_malformed_pointer_is_one_clear_error_line(models: str, body: bytes, field: str) -> None:
    from firm.cli.main import app

    _pointer(models, body)
    res = CliRunner().invoke(
        app,
        [
            "serve",
            "resolve-repository",
            f"--service={SERVICE}",
            "--default=s3://m/annotated",
            "--deployed-at=2025-07-01T00:00:00Z",
        ],
    )
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert f"reward-service/{SERVICE}/current.json" in lines[0] and field in lines[0]


def test_the_init_container_command_fetches_the_promoted_repository(models: str, tmp_path: Path) -> None:
    """The chart's init container command, as rendered (tests/deploy/test_chart.py pins it), fetches and verifies
    the promoted repository — not the annotated one."""
    from firm.cli.main import app
    from firm.storage import publish_dir

    for name in ("annotated", "promoted"):
        src = tmp_path / name
        (src / "firm_engine").mkdir(parents=True)
        (src / "firm_engine" / "config.pbtxt").write_text(f'name: "firm_engine" # {name}\n')
        publish_dir(src, f"{models}/critics/{name}")
    _promote(models, f"{models}/critics/promoted")
    dest = tmp_path / "models" / "repo"
    res = CliRunner().invoke(
        app,
        [
            "serve",
            "resolve-repository",
            f"--service={SERVICE}",
            f"--default={models}/critics/annotated",
            "--deployed-at=",  # the annotation is absent: the downward API gives ""
            f"--fetch={dest}",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"{models}/critics/promoted"
    assert "# promoted" in (dest / "firm_engine" / "config.pbtxt").read_text()


def test_a_rollback_points_the_pods_at_the_version_it_restores(
    models: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rollback` records the restored version's own repository in current.json (before: none, so pods fell back
    to the annotation). The model control calls are stubbed: tests/serving/test_rollout.py runs them for real."""
    from types import SimpleNamespace

    from firm.launch import rollout as ro
    from firm.launch.rollout import LiveRepository, resolve_repository

    src = tmp_path / "v1"
    (src / "firm_engine" / "1").mkdir(parents=True)
    (src / "firm_engine" / "config.pbtxt").write_text('name: "firm_engine"\n')
    live = LiveRepository.prepare(src, tmp_path / "live")
    live._write_release(2, {"firm_engine": 'name: "firm_engine"\n'}, "firm_engine")
    live.activate(2, previous=[1])
    live._save_state({**live.state(), "repositories": {"1": str(src), "2": "s3://m/v2"}})
    monkeypatch.setattr(ro, "_service", lambda s: SimpleNamespace(live=str(live.path), http="x"))
    monkeypatch.setattr(ro, "_load_all", lambda *a: None)
    ro.rollback(SERVICE, who="t@h")
    assert resolve_repository(SERVICE, "s3://m/annotated") == str(src)
