"""FIRM's object store: one API over `file://` (local, under `$FIRM_HOME`) and `s3://` (MinIO or any S3).

store, key = open_store("s3://firm-checkpoints/run-1/step-100/")
publish_dir("out/step-100", "s3://firm-checkpoints/run-1/step-100")   # files first, MANIFEST.json last
latest("s3://firm-checkpoints/run-1")                                  # newest complete publication
fetch_dir(uri, "local/dir")                                            # verifies every sha256
resolve_local(uri_or_path)                                             # verified copy in $FIRM_HOME/cache
"""

from typing import TYPE_CHECKING

from firm.storage.base import MANIFEST_NAME, ObjectInfo, ObjectStore, sha256_file
from firm.storage.local import LocalStore
from firm.storage.manifest import Manifest, ManifestFile
from firm.storage.publish import (
    fetch_dir,
    is_published,
    latest,
    publish_dir,
    read_bytes,
    read_manifest,
    resolve_local,
    write_bytes,
)
from firm.storage.stores import check_store_access, init_buckets, open_store
from firm.storage.transfer import copy, plan_copy
from firm.storage.uris import StoreURI, is_uri, join_uri, parse_uri, to_uri

if TYPE_CHECKING:
    from firm.storage.s3 import RetryPolicy, S3Store

_S3_NAMES = ("RetryPolicy", "S3Store")


def __getattr__(name: str) -> object:
    """`RetryPolicy` and `S3Store` on first use: the S3 SDK (minio) loads only where an `s3://` store is used,
    not in every command and training rank that reads local files."""
    if name in _S3_NAMES:
        from firm.storage import s3

        return getattr(s3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MANIFEST_NAME",
    "LocalStore",
    "Manifest",
    "ManifestFile",
    "ObjectInfo",
    "ObjectStore",
    "RetryPolicy",
    "S3Store",
    "StoreURI",
    "check_store_access",
    "copy",
    "fetch_dir",
    "init_buckets",
    "is_published",
    "is_uri",
    "join_uri",
    "latest",
    "open_store",
    "parse_uri",
    "plan_copy",
    "publish_dir",
    "read_bytes",
    "read_manifest",
    "resolve_local",
    "sha256_file",
    "to_uri",
    "write_bytes",
]
