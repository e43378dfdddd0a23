"""Reachability of the configured object store, for `firmctl doctor` (never prints secrets)."""

from __future__ import annotations

import os
from typing import Literal

from firm.config import FirmSettings
from firm.errors import StorageError
from firm.storage.s3 import RetryPolicy, S3Store, endpoint_from_settings, make_client
from firm.storage.uris import parse_uri

Status = Literal["OK", "WARN", "FAIL"]


def check_store(settings: FirmSettings) -> tuple[Status, str]:
    """`(status, detail)`: FAIL when the store cannot be used, WARN when only its buckets are missing."""
    try:
        root = parse_uri(settings.store_uri)
        buckets = {name: parse_uri(uri) for name, uri in settings.bucket_uris().items()}
        if root.scheme == "file":
            path = root.local_path
            if path.exists() and not (path.is_dir() and os.access(path, os.W_OK | os.X_OK)):
                return "FAIL", f"{settings.store_uri}: not a writable directory"
            missing = [str(u) for u in buckets.values() if not u.local_path.is_dir()]
        else:
            ep = endpoint_from_settings(settings)
            client = make_client(settings, what=settings.store_uri)
            quick = RetryPolicy(attempts=2, base_delay=0.1)
            missing = [
                str(u)
                for u in buckets.values()
                if not S3Store(client, u.bucket, ep.host, ep.region, quick).bucket_exists()
            ]
    except StorageError as exc:
        return "FAIL", str(exc)
    where = settings.store_uri if root.scheme == "file" else f"{settings.store_uri} at {ep.host}"
    if missing:
        return "WARN", f"{where} reachable; missing buckets {', '.join(missing)} (run `firmctl storage init`)"
    return "OK", f"{where} (buckets: {', '.join(str(u) for u in buckets.values())})"
