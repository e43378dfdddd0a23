"""The `ObjectStore` interface shared by the local (`file://`) and S3 (`s3://`) stores.

Keys are `/`-separated strings; prefixes are plain string prefixes (as in S3), so `list("ckpt/step-1")` also
matches `ckpt/step-10/...`. Pass a prefix ending in `/` to list one "directory".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

MANIFEST_NAME = "MANIFEST.json"
TMP_MARKER = ".firm-tmp-"
CHUNK = 1024 * 1024

ByteCallback = Callable[[int], None]
J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class ObjectInfo:
    """One entry of a listing: an object, or (non-recursive listings only) a common prefix with `is_dir`."""

    key: str
    size: int = 0
    is_dir: bool = False
    last_modified: datetime | None = None
    etag: str | None = None


def is_manifest_key(key: str) -> bool:
    return key == MANIFEST_NAME or key.endswith("/" + MANIFEST_NAME)


def dir_prefix(key: str) -> str:
    """`key` as a directory prefix (with a trailing slash; the empty key stays the bucket/root)."""
    return key if not key or key.endswith("/") else key + "/"


def run_parallel(jobs: Sequence[J], fn: Callable[[J], R], workers: int) -> list[R]:
    """`fn` over `jobs` in threads, results in job order; the first failure cancels what has not started."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in done:
            exc = fut.exception()
            if exc is not None:
                for p in pending:
                    p.cancel()
                raise exc
        return [f.result() for f in futures]


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensure_dir(path: str | Path, what: str) -> list[Path]:
    """Create the output directory `path` (and its parents); returns the directories this call created, so a
    failed run can remove exactly those. A directory that cannot be made is an `InputError` naming `what` (the
    option or setting) and the real reason — never "no such file" for a path the user asked us to create."""
    from firm.errors import InputError

    p = Path(path).expanduser()
    missing = missing_dirs(p)
    anc = missing[0].parent if missing else p
    if anc.exists() and not anc.is_dir():
        raise InputError(f"{what} {p}: {anc} is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"{what} {p}: cannot create a directory in {anc} ({reason})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise InputError(f"{what} {p}: directory is not writable")
    return missing


def missing_dirs(path: str | Path) -> list[Path]:
    """The directories that do not exist yet on the way to `path` (shallowest first; empty if it exists)."""
    missing = []
    anc = Path(path).expanduser()
    while not anc.exists() and anc != anc.parent:
        missing.append(anc)
        anc = anc.parent
    return list(reversed(missing))


def remove_if_empty(dirs: list[Path]) -> None:
    """Remove directories (deepest first) that are still empty: what a failed start created and left unused.
    `dirs` is shallowest first, as `ensure_dir` / `missing_dirs` return them."""
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    Readers (and listings) never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class ObjectStore(ABC):
    """One bucket-like namespace of objects. Obtain one with `firm.storage.open_store(uri)`."""

    scheme: str

    @abstractmethod
    def uri(self, key: str) -> str:
        """The URI of `key` in this store."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write one object (atomically: readers see the old object or the new one)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read one object; `StorageError` naming the URI if it does not exist."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path, on_bytes: ByteCallback | None = None) -> None:
        """Upload a local file (large files go up as parallel multipart on S3)."""

    @abstractmethod
    def get_file(self, key: str, path: str | Path, on_bytes: ByteCallback | None = None) -> None:
        """Stream an object into a local file, written atomically."""

    @abstractmethod
    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order (all pages)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and metadata of one object; `StorageError` if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True when an object with exactly this key exists."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete objects (missing ones are ignored)."""

    @abstractmethod
    def copy_object(self, src_key: str, dst_key: str) -> None:
        """Copy one object inside this store."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; manifests go first so readers stop resolving it at once."""
        keys = [o.key for o in self.list(prefix)]
        manifests = [k for k in keys if is_manifest_key(k)]
        if manifests:
            self.delete(manifests)
        others = [k for k in keys if not is_manifest_key(k)]
        if others:
            self.delete(others)
        return len(keys)

    def copy_prefix(self, src_prefix: str, dst_prefix: str) -> int:
        """Copy every object under `src_prefix` to the same relative key under `dst_prefix`.

        Manifests are copied last, so a published directory becomes visible at the destination only when complete.
        """
        objs = [o for o in self.list(src_prefix) if not o.is_dir]
        ordered = [o for o in objs if not is_manifest_key(o.key)] + [
            o for o in objs if is_manifest_key(o.key)
        ]
        for o in ordered:
            self.copy_object(o.key, dst_prefix + o.key[len(src_prefix) :])
        return len(ordered)
