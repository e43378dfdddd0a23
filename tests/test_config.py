"""`FirmSettings`: env (`FIRM_*`) over YAML over defaults; secrets never shown; bad config → one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from firm.config import FirmSettings, get_settings
from firm.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    for k in list(os.environ):
        if k.startswith("FIRM_"):
            monkeypatch.delenv(k)
    home = tmp_path / "home"
    monkeypatch.setenv("FIRM_HOME", str(home))
    return home


def test_defaults_live_under_firm_home(clean_env: Path) -> None:
    s = get_settings(fresh=True)
    assert s.home == clean_env
    assert s.store_uri == (clean_env / "store").as_uri()
    assert s.bucket_uris() == {
        "datasets": (clean_env / "store" / "firm-datasets").as_uri(),
        "checkpoints": (clean_env / "store" / "firm-checkpoints").as_uri(),
        "models": (clean_env / "store" / "firm-models").as_uri(),
    }
    assert s.s3_access_key is None and s.s3_secure is True


def test_env_overrides_and_is_seen_without_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().namespace == "firm"
    monkeypatch.setenv("FIRM_NAMESPACE", "team-a")
    monkeypatch.setenv("FIRM_STORE_URI", "s3://firm-root")
    monkeypatch.setenv("FIRM_MODELS_BUCKET", "critics")
    s = get_settings()
    assert s.namespace == "team-a"
    assert s.bucket_uris()["models"] == "s3://critics"


def test_secrets_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRM_S3_ACCESS_KEY", "AKIA-visible-nowhere")
    monkeypatch.setenv("FIRM_S3_SECRET_KEY", "super-secret-value")
    s = get_settings()
    assert s.s3_secret_key is not None and s.s3_secret_key.get_secret_value() == "super-secret-value"
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "super-secret-value" not in text and "AKIA-visible-nowhere" not in text


def test_yaml_file_then_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "firm.yaml"
    cfg.write_text("namespace: from-yaml\ntriton_url: 10.0.0.1:8001\ns3_secure: false\n")
    monkeypatch.setenv("FIRM_CONFIG", str(cfg))
    monkeypatch.setenv("FIRM_NAMESPACE", "from-env")
    s = get_settings(fresh=True)
    assert (s.namespace, s.triton_url, s.s3_secure) == ("from-env", "10.0.0.1:8001", False)


def test_config_yaml_in_home_is_picked_up(clean_env: Path) -> None:
    clean_env.mkdir()
    (clean_env / "config.yaml").write_text("checkpoints_bucket: ckpts\n")
    assert get_settings(fresh=True).checkpoints_bucket == "ckpts"


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        ("namespace: [unclosed\n", "invalid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("namespcae: typo\n", "namespcae"),
        ("s3_secure: maybe\n", "s3_secure"),
    ],
)
def test_bad_config_file_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None, match: str
) -> None:
    cfg = tmp_path / "firm.yaml"
    if content is not None:
        cfg.write_text(content)
    monkeypatch.setenv("FIRM_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=match) as info:
        get_settings(fresh=True)
    assert "\n" not in str(info.value)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRM_S3_SECURE", "perhaps")
    with pytest.raises(ConfigError, match=r"FIRM_S3_SECURE.*'perhaps'"):
        get_settings()


def test_constructor_arguments_win() -> None:
    s = FirmSettings(home="~/elsewhere", namespace="x")
    assert s.home == Path("~/elsewhere").expanduser() and s.namespace == "x"
    assert s.store_uri.endswith("/elsewhere/store")
