"""Copy objects or whole prefixes between any two locations (local path, `file://`, `s3://`).

Used by `firmctl storage cp`. Manifests are copied last, so a published directory copied elsewhere appears there
only when complete.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from firm.config import FirmSettings
from firm.errors import StorageError
from firm.storage.base import ByteCallback, ObjectStore, dir_prefix, is_manifest_key, run_parallel
from firm.storage.local import LocalStore
from firm.storage.publish import WORKERS
from firm.storage.stores import store_for
from firm.storage.uris import parse_uri


@dataclass(frozen=True)
class CopyItem:
    src_key: str
    dst_key: str
    size: int


@dataclass(frozen=True)
class CopyPlan:
    src: ObjectStore
    dst: ObjectStore
    items: list[CopyItem]
    single: bool = False  # one object (not a prefix) is copied

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.items)


def plan_copy(src: str, dst: str, settings: FirmSettings | None = None) -> CopyPlan:
    """What `copy(src, dst)` will do: one object, or every object under the prefix/directory `src`.

    A single object copied to a destination ending in `/` (or an existing local directory) keeps its name; a
    prefix is copied recursively with its contents placed under `dst`.
    """
    s, d = parse_uri(src), parse_uri(dst)
    sstore, dstore = store_for(s, settings), store_for(d, settings)
    if s.key and not s.key.endswith("/") and sstore.exists(s.key):
        size = sstore.stat(s.key).size
        into_dir = d.key.endswith("/") or not d.key or (d.scheme == "file" and d.local_path.is_dir())
        dkey = dir_prefix(d.key) + s.name if into_dir else d.key
        items = [CopyItem(s.key, dkey, size)]
    else:
        prefix, dprefix = dir_prefix(s.key), dir_prefix(d.key)
        objs = [o for o in sstore.list(prefix) if not o.is_dir]
        if not objs:
            raise StorageError(f"{src}: no such object, directory or prefix")
        objs.sort(key=lambda o: (is_manifest_key(o.key), o.key))
        items = [CopyItem(o.key, dprefix + o.key[len(prefix) :], o.size) for o in objs]
    if sstore.uri("") == dstore.uri("") and any(i.src_key == i.dst_key for i in items):
        raise StorageError(f"{src} and {dst} are the same location")
    return CopyPlan(sstore, dstore, items, single=len(items) == 1 and items[0].src_key == s.key)


def _same_s3_endpoint(src: ObjectStore, dst: ObjectStore) -> bool:
    """Both stores are S3 buckets behind one client (endpoint and credentials). Only called with two non-local
    stores, so the S3 module is loaded by then: importing it here costs a local-only process nothing."""
    from firm.storage.s3 import S3Store

    return isinstance(src, S3Store) and isinstance(dst, S3Store) and src.client is dst.client


def _copy_one(plan: CopyPlan, item: CopyItem, on_bytes: ByteCallback | None) -> None:
    src, dst = plan.src, plan.dst
    if isinstance(src, LocalStore):  # local → local or local → S3
        dst.put_file(item.dst_key, src.path(item.src_key), on_bytes)
    elif isinstance(dst, LocalStore):  # S3 → local
        src.get_file(item.src_key, dst.path(item.dst_key), on_bytes)
    elif _same_s3_endpoint(src, dst):
        dst.copy_from(src.bucket, item.src_key, item.dst_key)  # server-side copy on one endpoint
        if on_bytes:
            on_bytes(item.size)
    else:  # S3 → S3 across endpoints: through a temporary file
        with tempfile.TemporaryDirectory(prefix="firm-cp-") as tmp:
            path = Path(tmp) / "object"
            src.get_file(item.src_key, path)
            dst.put_file(item.dst_key, path, on_bytes)


def copy(
    src: str,
    dst: str,
    *,
    on_bytes: ByteCallback | None = None,
    workers: int = WORKERS,
    settings: FirmSettings | None = None,
    plan: CopyPlan | None = None,
) -> CopyPlan:
    """Copy `src` to `dst` (see `plan_copy`); files in parallel, manifests after everything else."""
    plan = plan or plan_copy(src, dst, settings)
    data = [i for i in plan.items if not is_manifest_key(i.src_key)]
    manifests = [i for i in plan.items if is_manifest_key(i.src_key)]
    run_parallel(data, lambda i: _copy_one(plan, i, on_bytes), workers)
    for item in manifests:
        _copy_one(plan, item, on_bytes)
    return plan
