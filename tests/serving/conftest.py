"""One real tritonserver per test module (test_service.py), started from an s3:// repository on moto.

The format-taught tiny critic (its answers parse) is exported with both reward models and firm_critic, published
to a moto bucket, and `TritonServer` fetches (manifest-verified) and serves it on free loopback ports.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

MAX_NEW_TOKENS = 40
MAX_PIXELS = 64 * 64


@pytest.fixture(scope="module")
def serving_env(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Session-wide FIRM settings: moto S3 store and a private FIRM_HOME (backend dir + fetch cache)."""
    from firm.config import get_settings

    env = {
        "FIRM_HOME": str(tmp_path_factory.mktemp("firm_home")),
        "FIRM_S3_ENDPOINT": s3_endpoint,
        "FIRM_S3_ACCESS_KEY": "testing-access",
        "FIRM_S3_SECRET_KEY": "testing-secret",
        "FIRM_S3_SECURE": "false",
        "FIRM_S3_REGION": "us-east-1",
        "FIRM_STORE_URI": f"s3://firm-serving-{uuid.uuid4().hex[:8]}",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings(fresh=True)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    get_settings(fresh=True)


@pytest.fixture(scope="module")
def repo_uri(serving_env: dict[str, str], formatted_critic_dir: Path) -> str:
    from firm.serving.export import BatchingConfig, ExportConfig, export_repository
    from firm.storage.stores import open_store

    store, _ = open_store(serving_env["FIRM_STORE_URI"] + "/reward-service")
    store.ensure_bucket()

    cfg = ExportConfig(
        critic=str(formatted_critic_dir),
        task="all",
        max_new_tokens=MAX_NEW_TOKENS,
        max_pixels=MAX_PIXELS,
        batching=BatchingConfig(
            max_batch_size=16, preferred_batch_sizes=[4, 8, 16], max_queue_delay_us=20_000
        ),
    )
    return export_repository(cfg, f"{serving_env['FIRM_STORE_URI']}/reward-service/v1")


@pytest.fixture(scope="module")
def server(repo_uri: str) -> Iterator[object]:
    from firm.serving.server import TritonServer

    with TritonServer(repo_uri) as srv:
        yield srv
