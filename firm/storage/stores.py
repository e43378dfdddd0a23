"""`open_store(uri)`: pick the object store for a URI by its scheme."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

from firm.config import FirmSettings, get_settings
from firm.errors import StorageError
from firm.storage.base import ObjectStore
from firm.storage.local import LocalStore
from firm.storage.uris import StoreURI, parse_uri

if TYPE_CHECKING:
    from firm.storage.s3 import S3Store

_LOCAL = LocalStore("/")
_clients: dict[tuple[object, ...], object] = {}
_lock = threading.Lock()


def _s3_store(bucket: str, settings: FirmSettings) -> S3Store:
    # imported here: the S3 SDK loads only in a process that opens an s3:// store
    from firm.storage.s3 import S3Store, endpoint_from_settings, make_client

    ep = endpoint_from_settings(settings)
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    cache_key = (ep, access, secret)
    with _lock:
        client = _clients.get(cache_key)
        if client is None:
            client = make_client(settings, what=f"s3://{bucket}")
            _clients[cache_key] = client
    return S3Store(client, bucket, ep.host, ep.region)  # type: ignore[arg-type]


def store_for(uri: StoreURI, settings: FirmSettings | None = None) -> ObjectStore:
    """The store holding a parsed URI (S3 clients are shared per endpoint and credentials)."""
    if uri.scheme == "file":
        return _LOCAL
    return _s3_store(uri.bucket, settings or get_settings())


def open_store(uri: str | Path, settings: FirmSettings | None = None) -> tuple[ObjectStore, str]:
    """`(store, key)` for a `file://`/`s3://` URI or a local path; `StorageError` for unknown/malformed URIs."""
    parsed = parse_uri(uri)
    return store_for(parsed, settings), parsed.key


def check_store_access(locations: dict[str, str | None]) -> None:
    """Fail before any work starts when an `s3://` location cannot be opened (e.g. missing credentials; no network
    call is made): `ConfigError` naming the setting, e.g. `data.dataset=s3://...: <why>`."""
    from firm.errors import ConfigError, FirmError

    for name, uri in locations.items():
        if uri and uri.startswith("s3://"):
            try:
                open_store(uri)
            except FirmError as exc:
                raise ConfigError(f"{name}={uri}: {exc}") from None


def init_buckets(settings: FirmSettings | None = None) -> list[tuple[str, bool]]:
    """Create the configured datasets/checkpoints/models buckets (directories for a `file://` store).

    Idempotent; returns `(uri, created)` per bucket.
    """
    settings = settings or get_settings()
    out: list[tuple[str, bool]] = []
    for uri in settings.bucket_uris().values():
        parsed = parse_uri(uri)
        store = store_for(parsed, settings)
        if parsed.scheme == "s3":
            out.append((uri, cast("S3Store", store).ensure_bucket()))
        else:
            path = parsed.local_path
            created = not path.is_dir()
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"{uri}: cannot create directory: {exc.strerror or exc}") from exc
            out.append((uri, created))
    return out
