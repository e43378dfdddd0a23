"""Atomic publication of directories (checkpoints, dataset shard sets, Triton model repositories).

`publish_dir` uploads every file, then writes `MANIFEST.json` last; a directory without a manifest does not exist
for readers. `fetch_dir` verifies sizes and sha256 before anything becomes visible in the destination, `latest`
finds the newest complete publication under a prefix, `resolve_local` turns a URI into a verified local directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from firm.config import FirmSettings, get_settings
from firm.errors import StorageError
from firm.storage.base import (
    MANIFEST_NAME,
    TMP_MARKER,
    ByteCallback,
    ObjectStore,
    dir_prefix,
    run_parallel,
    sha256_file,
)
from firm.storage.manifest import Manifest, ManifestFile, now_utc
from firm.storage.stores import open_store, store_for
from firm.storage.uris import StoreURI, is_uri, parse_uri

WORKERS = 4
log = logging.getLogger("firm.storage")


def default_producer() -> str:
    from firm import __version__

    return f"firm {__version__} on {socket.gethostname()}"


def _local_files(local_dir: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(local_dir, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(local_dir).as_posix()
            if rel == MANIFEST_NAME or TMP_MARKER in name:
                continue
            files.append(rel)
    return sorted(files)


def read_manifest(uri: str, settings: FirmSettings | None = None) -> Manifest:
    """The manifest of a published directory; `StorageError` if it has none (not published, or unfinished)."""
    store, key = open_store(uri, settings)
    mkey = dir_prefix(key) + MANIFEST_NAME
    if not store.exists(mkey):
        raise StorageError(
            f"{uri}: no {MANIFEST_NAME} here: not a published directory (or its publish did not finish)"
        )
    return Manifest.from_bytes(store.get_bytes(mkey), store.uri(mkey))


def is_published(uri: str, settings: FirmSettings | None = None) -> bool:
    """True when `uri` is a finished publish (its manifest is there); False when it is not, or its bucket does not
    exist yet. Other failures (unreachable store, bad credentials) raise."""
    from firm.errors import MissingBucketError

    store, key = open_store(uri, settings)
    try:
        return store.exists(dir_prefix(key) + MANIFEST_NAME)
    except MissingBucketError:
        return False


def publish_dir(
    local_dir: str | Path,
    uri: str,
    producer: str | None = None,
    *,
    workers: int = WORKERS,
    on_bytes: ByteCallback | None = None,
    settings: FirmSettings | None = None,
    uploaded: Sequence[ManifestFile] = (),
) -> Manifest:
    """Publish `local_dir` at `uri`: upload every file (in parallel), then write `MANIFEST.json` last.

    Re-publishing to the same URI first removes the old manifest, so readers never mix old and new files, and the
    old publication's files that the new one does not list are removed before the new manifest is written (no file
    under a publication is one its manifest does not list). `uploaded`: files other processes already put under `uri` (e.g. each training rank's optimizer shard) with the
    size and sha256 they computed; each must exist there with that size, and the manifest lists it like the rest
    (readers verify its sha256 as for any other file).
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise StorageError(f"{src}: not a local directory, nothing to publish")
    store, key = open_store(uri, settings)
    prefix = dir_prefix(key)
    mkey = prefix + MANIFEST_NAME
    previous: list[str] = []
    if store.exists(mkey):
        try:
            previous = [f.path for f in Manifest.from_bytes(store.get_bytes(mkey), store.uri(mkey)).files]
        except StorageError:  # an unreadable old manifest: nothing of it can be trusted, only removed
            previous = []
        store.delete([mkey])

    def upload(rel: str) -> ManifestFile:
        path = src / rel
        try:
            before = path.stat()
            digest = sha256_file(path)
        except OSError as exc:
            raise StorageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        store.put_file(prefix + rel, path, on_bytes)
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise StorageError(f"{path}: file changed while being published")
        return ManifestFile(path=rel, size=before.st_size, sha256=digest)

    local = _local_files(src)
    clash = sorted({f.path for f in uploaded} & set(local))
    if clash:
        raise StorageError(f"{uri}: {clash[0]} is both a local file and an already uploaded one")
    for entry in uploaded:
        key = prefix + entry.path
        size = store.stat(key).size if store.exists(key) else None
        if size != entry.size:
            raise StorageError(
                f"{store.uri(key)}: expected an uploaded file of {entry.size} bytes, found "
                f"{'none' if size is None else f'{size} bytes'}"
            )
    entries = run_parallel(local, upload, workers) + list(uploaded)
    stale = sorted(set(previous) - {e.path for e in entries})
    if stale:
        store.delete([prefix + rel for rel in stale])
    manifest = Manifest(created_at=now_utc(), producer=producer or default_producer(), files=entries)
    store.put_bytes(mkey, manifest.to_bytes())
    return manifest


def _download_verified(
    store: ObjectStore,
    prefix: str,
    manifest: Manifest,
    dest: Path,
    workers: int,
    on_bytes: ByteCallback | None,
) -> None:
    def download(entry: ManifestFile) -> None:
        target = dest / entry.path
        store.get_file(prefix + entry.path, target, on_bytes)
        size = target.stat().st_size
        where = store.uri(prefix + entry.path)
        if size != entry.size:
            raise StorageError(f"{where}: size mismatch (manifest says {entry.size} bytes, got {size})")
        digest = sha256_file(target)
        if digest != entry.sha256:
            raise StorageError(
                f"{where}: checksum mismatch (manifest sha256 {entry.sha256[:16]}…, downloaded {digest[:16]}…)"
            )

    run_parallel(manifest.files, download, workers)
    (dest / MANIFEST_NAME).write_bytes(manifest.to_bytes())


@contextlib.contextmanager
def _staging(next_to: Path) -> Iterator[Path]:
    next_to.parent.mkdir(parents=True, exist_ok=True)
    tmp = next_to.parent / f".{next_to.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_dir(
    uri: str,
    local_dir: str | Path,
    *,
    workers: int = WORKERS,
    on_bytes: ByteCallback | None = None,
    settings: FirmSettings | None = None,
    select: Callable[[str], bool] | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Download the published directory at `uri` into `local_dir`, verifying every size and sha256.

    Files are staged next to `local_dir` and moved into place only after all of them verified, so a failure
    (missing manifest, checksum mismatch, network) leaves `local_dir` as it was. A non-empty `local_dir` is refused
    (`firm.storage.targets.check_target`) unless `overwrite`: then the verified copy replaces it in one swap, never
    merged with what was there. `select(path)`: fetch only the manifest's files it accepts (the whole manifest is
    still written and returned).
    """
    from firm.storage.targets import check_target

    dest = Path(local_dir)
    check_target(dest, "destination", overwrite=overwrite)
    full = read_manifest(uri, settings)
    manifest = (
        full
        if select is None
        else full.model_copy(update={"files": [f for f in full.files if select(f.path)]})
    )
    store, key = open_store(uri, settings)
    with _staging(dest) as stage:
        _download_verified(store, dir_prefix(key), manifest, stage, workers, on_bytes)
        (stage / MANIFEST_NAME).write_bytes(full.to_bytes())
        _install_dir(stage, dest)
    return full


def _natural(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def latest(prefix_uri: str, settings: FirmSettings | None = None) -> str | None:
    """URI of the newest complete publication under the directory `prefix_uri` (None if there is none).

    Only directories with a `MANIFEST.json` count; newest by the manifest's `created_at`, then by name
    (natural order: step-9 < step-10).
    """
    store, key = open_store(prefix_uri, settings)
    prefix = dir_prefix(key)
    best: tuple[object, ...] | None = None
    best_uri: str | None = None
    for obj in store.list(prefix):
        if obj.key != prefix + MANIFEST_NAME and not obj.key.endswith("/" + MANIFEST_NAME):
            continue
        manifest = Manifest.from_bytes(store.get_bytes(obj.key), store.uri(obj.key))
        dir_key = obj.key[: -len(MANIFEST_NAME)].rstrip("/")
        rank = (manifest.created_at, _natural(dir_key))
        if best is None or rank > best:
            best, best_uri = rank, store.uri(dir_key)
    return best_uri


def _cache_root(settings: FirmSettings) -> Path:
    return settings.home / "cache"


def _cache_dir(settings: FirmSettings, uri: StoreURI) -> Path:
    digest = hashlib.sha256(str(uri.as_prefix()).encode()).hexdigest()[:24]
    return _cache_root(settings) / digest


def _cache_valid(cache: Path, manifest_bytes: bytes) -> bool:
    try:
        if (cache / MANIFEST_NAME).read_bytes() != manifest_bytes:
            return False
    except OSError:
        return False
    cached = Manifest.from_bytes(manifest_bytes, str(cache))
    if not all(
        (cache / f.path).is_file() and (cache / f.path).stat().st_size == f.size for f in cached.files
    ):
        return False
    # sizes alone miss a file damaged in place (disk error, an editor, a stray write): hash every file again
    bad = [f.path for f in cached.files if sha256_file(cache / f.path) != f.sha256]
    if bad:
        log.warning("cache %s: %s does not match its manifest sha256; fetching it again", cache, bad[0])
    return not bad


def _install_dir(stage: Path, dest: Path) -> None:
    """Swap a fully verified staging directory onto `dest` (replacing an outdated one)."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}{TMP_MARKER}old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
    try:
        os.rename(stage, dest)
    except OSError:
        if not dest.exists():
            raise
        # another process installed the same cache entry first: keep theirs
    finally:
        stage.mkdir(exist_ok=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def resolve_local(
    uri_or_path: str | Path,
    *,
    settings: FirmSettings | None = None,
    on_bytes: ByteCallback | None = None,
) -> Path:
    """A local path for a path or URI.

    - a plain local path is returned as is;
    - a published directory (`file://` or `s3://`, with `MANIFEST.json`) is fetched and verified into
      `$FIRM_HOME/cache/<hash>`; a cache whose manifest matches the published one is reused only after every
      cached file matched the manifest's size and sha256 again (a damaged cache is fetched anew);
    - a single `s3://` object is downloaded into the cache (re-downloaded when its ETag or size changes),
      a `file://` object or unpublished local directory is used in place.
    """
    if not isinstance(uri_or_path, str) or not is_uri(uri_or_path):
        return Path(uri_or_path).expanduser()
    settings = settings or get_settings()
    parsed = parse_uri(uri_or_path)
    store = store_for(parsed, settings)
    prefix = dir_prefix(parsed.key)
    mkey = prefix + MANIFEST_NAME
    if store.exists(mkey):
        manifest_bytes = store.get_bytes(mkey)
        manifest = Manifest.from_bytes(manifest_bytes, store.uri(mkey))
        cache = _cache_dir(settings, parsed)
        if _cache_valid(cache, manifest_bytes):
            return cache
        with _staging(cache) as stage:
            _download_verified(store, prefix, manifest, stage, WORKERS, on_bytes)
            _install_dir(stage, cache)
        return cache
    if parsed.scheme == "file":
        path = parsed.local_path
        if path.exists():
            return path
        raise StorageError(f"{uri_or_path}: no such file or directory")
    if parsed.key and not parsed.key.endswith("/") and store.exists(parsed.key):
        info = store.stat(parsed.key)
        cache = _cache_dir(settings, parsed)
        target, stamp = cache / parsed.name, cache / ".source.json"
        want = json.dumps({"uri": str(parsed), "etag": info.etag, "size": info.size})
        with contextlib.suppress(OSError):
            if stamp.read_text() == want and target.is_file() and target.stat().st_size == info.size:
                return target
        store.get_file(parsed.key, target, on_bytes)
        stamp.write_text(want)
        return target
    raise StorageError(
        f"{uri_or_path}: no {MANIFEST_NAME} (not a published directory, or its publish did not finish) "
        "and no object with this key"
    )


def read_bytes(uri: str | Path, settings: FirmSettings | None = None) -> bytes:
    """The bytes of one object (e.g. an image URI) or local file."""
    store, key = open_store(uri, settings)
    return store.get_bytes(key)


def write_bytes(uri: str | Path, data: bytes, settings: FirmSettings | None = None) -> str:
    """Write one object atomically; returns its URI."""
    store, key = open_store(uri, settings)
    if not key or key.endswith("/"):
        raise StorageError(f"{uri}: names a directory, not an object")
    store.put_bytes(key, data)
    return store.uri(key)
