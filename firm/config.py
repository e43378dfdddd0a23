"""`FirmSettings`: the one place FIRM reads its configuration from.

Sources, highest priority first: constructor arguments, environment variables with the `FIRM_` prefix
(e.g. `FIRM_STORE_URI`, `FIRM_S3_ENDPOINT`), a YAML file named by `FIRM_CONFIG` (or `$FIRM_HOME/config.yaml` if it
exists), then defaults. Secrets are `SecretStr`: they never appear in `repr`, logs or `firmctl doctor`.
Nested settings (`cluster`) take `__` in their environment names: `FIRM_CLUSTER__TRAINER_IMAGE=...`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from firm.errors import ConfigError
from firm.launch.cluster import ClusterSettings


def _default_home() -> Path:
    return Path(os.environ.get("FIRM_HOME", "~/.firm")).expanduser()


class _YamlSource(PydanticBaseSettingsSource):
    """Reads settings from the YAML file named by FIRM_CONFIG, else $FIRM_HOME/config.yaml when present."""

    def get_field_value(
        self, field: Any, field_name: str
    ) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        explicit = os.environ.get("FIRM_CONFIG")
        path = Path(explicit).expanduser() if explicit else _default_home() / "config.yaml"
        if not path.exists():
            if explicit:
                raise ConfigError(f"FIRM_CONFIG={explicit}: file does not exist")
            return {}
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        return data


class FirmSettings(BaseSettings):
    """Platform settings. Every field can be set as `FIRM_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="FIRM_", extra="forbid", validate_default=True, env_nested_delimiter="__"
    )

    home: Path = Field(
        default_factory=_default_home, description="FIRM's working directory (local store, caches)."
    )
    store_uri: str = Field(
        default="", description="Root of the object store: file:///abs/path or s3://bucket."
    )
    s3_endpoint: str | None = Field(
        default=None, description="S3/MinIO endpoint, host:port or http(s)://host:port."
    )
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_secure: bool = Field(default=True, description="Use TLS to reach the S3 endpoint.")
    s3_region: str | None = None
    datasets_bucket: str = "firm-datasets"
    checkpoints_bucket: str = "firm-checkpoints"
    models_bucket: str = "firm-models"
    triton_url: str = Field(
        default="127.0.0.1:8001", description="Triton gRPC endpoint of the reward service."
    )
    namespace: str = Field(default="firm", description="Kubernetes namespace for jobs and services.")
    cluster: ClusterSettings = Field(
        default_factory=ClusterSettings,
        description="node pools, images, Secret names (firm.launch.cluster); env: FIRM_CLUSTER__<FIELD>",
    )

    @field_validator("home", mode="before")
    @classmethod
    def _expand_home(cls, v: Any) -> Any:
        return Path(v).expanduser() if isinstance(v, str | Path) else v

    @model_validator(mode="after")
    def _default_store(self) -> FirmSettings:
        if not self.store_uri:
            self.store_uri = (self.home / "store").resolve().as_uri()
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls), file_secret_settings

    def bucket_uris(self) -> dict[str, str]:
        """URIs of the datasets/checkpoints/models roots inside the configured store."""
        if self.store_uri.startswith("s3://"):
            return {
                "datasets": f"s3://{self.datasets_bucket}",
                "checkpoints": f"s3://{self.checkpoints_bucket}",
                "models": f"s3://{self.models_bucket}",
            }
        root = self.store_uri.rstrip("/")
        return {
            "datasets": f"{root}/{self.datasets_bucket}",
            "checkpoints": f"{root}/{self.checkpoints_bucket}",
            "models": f"{root}/{self.models_bucket}",
        }


SECRET_FIELDS = ("s3_access_key", "s3_secret_key")


def settings_env_keys() -> list[str]:
    """The environment variables a settings ConfigMap may hold: every non-secret setting (`FIRM_<FIELD>`, and
    `FIRM_CLUSTER__<FIELD>` for the cluster settings). `home` is per machine and credentials come from Secrets."""
    top = [
        f"FIRM_{name.upper()}"
        for name in FirmSettings.model_fields
        if name not in (*SECRET_FIELDS, "home", "cluster")
    ]
    return top + [f"FIRM_CLUSTER__{name.upper()}" for name in ClusterSettings.model_fields]


def _env_snapshot() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("FIRM_")))


@lru_cache(maxsize=8)
def _cached(env: tuple[tuple[str, str], ...]) -> FirmSettings:
    return FirmSettings()


def get_settings(fresh: bool = False) -> FirmSettings:
    """The process-wide settings. Cached per value of the `FIRM_*` environment, so a changed variable is seen at
    once; `fresh` also re-reads the YAML file."""
    if fresh:
        _cached.cache_clear()
    try:
        return _cached(_env_snapshot())
    except ConfigError:
        raise
    except ValidationError as exc:  # → one clear line naming the setting (never echoing a secret)
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        field = ".".join(loc) or "?"
        # the variable that holds it: FIRM_<FIELD>, or FIRM_CLUSTER__<FIELD> for a cluster setting (whose nested
        # values, e.g. one node pool's job_resources, are inside that variable's JSON)
        env = "FIRM_" + "__".join(loc[:2] if loc[:1] == ["cluster"] else loc[:1] or ["?"]).upper()
        got = "" if "key" in field or "input" not in err else f" (got {err['input']!r})"
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        raise ConfigError(f"invalid FIRM setting {field!r} (env {env}): {msg}{got}") from exc
    except Exception as exc:
        raise ConfigError(f"invalid FIRM settings: {exc}") from exc
