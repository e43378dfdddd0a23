"""The local object store behind `file://` URIs: objects are files, every write is atomic (temp file + rename)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from firm.errors import StorageError
from firm.storage.base import CHUNK, TMP_MARKER, ByteCallback, ObjectInfo, ObjectStore, atomic_path
from firm.storage.uris import StoreURI


class LocalStore(ObjectStore):
    """Objects under `root` (default `/`: the key of `file:///a/b` is `a/b`)."""

    scheme = "file"

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)

    def uri(self, key: str) -> str:
        rel = (self.root / key).as_posix().lstrip("/")
        if key.endswith("/") and not rel.endswith("/"):
            rel += "/"
        return str(StoreURI("file", "", rel))

    def path(self, key: str) -> Path:
        """The filesystem path of `key`; keys with `..` segments (e.g. from a hostile bucket listing) are refused."""
        if ".." in key.split("/"):
            raise StorageError(f"{self.uri(key)}: refusing a key with '..' segments")
        return self.root / key

    _path = path

    def _file(self, key: str) -> Path:
        path = self._path(key)
        if path.is_dir():
            raise StorageError(f"{self.uri(key)}: is a directory, not an object")
        if not path.is_file():
            raise StorageError(f"{self.uri(key)}: no such object")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            with atomic_path(self._path(key)) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise StorageError(f"{self.uri(key)}: cannot write: {exc.strerror or exc}") from exc

    def get_bytes(self, key: str) -> bytes:
        path = self._file(key)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StorageError(f"{self.uri(key)}: cannot read: {exc.strerror or exc}") from exc

    @staticmethod
    def _copy(src: Path, dst: Path, on_bytes: ByteCallback | None) -> None:
        with atomic_path(dst) as tmp:
            if on_bytes is None:
                shutil.copyfile(src, tmp)
                return
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while block := fin.read(CHUNK):
                    fout.write(block)
                    on_bytes(len(block))

    def put_file(self, key: str, path: str | Path, on_bytes: ByteCallback | None = None) -> None:
        src = Path(path)
        if not src.is_file():
            raise StorageError(f"{src}: no such local file")
        try:
            self._copy(src, self._path(key), on_bytes)
        except OSError as exc:
            raise StorageError(f"{self.uri(key)}: cannot write: {exc.strerror or exc}") from exc

    def get_file(self, key: str, path: str | Path, on_bytes: ByteCallback | None = None) -> None:
        src = self._file(key)
        try:
            self._copy(src, Path(path), on_bytes)
        except OSError as exc:
            raise StorageError(f"{self.uri(key)}: cannot copy to {path}: {exc.strerror or exc}") from exc

    def _walk(self, base: Path) -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(base, onerror=None):
            dirnames.sort()
            for name in filenames:
                if TMP_MARKER not in name:
                    yield Path(dirpath) / name

    def _info(self, path: Path, key: str) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(key=key, size=st.st_size, last_modified=datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        if prefix.endswith("/") or not prefix:
            base, stem = self._path(prefix), ""
        else:
            base, stem = self._path(prefix).parent, self._path(prefix).name
        if not base.is_dir():
            return
        root_len = len(self.root.as_posix().rstrip("/")) + 1
        entries: list[ObjectInfo] = []
        try:
            children = sorted(base.iterdir())
        except OSError as exc:
            raise StorageError(f"{self.uri(prefix)}: cannot list: {exc.strerror or exc}") from exc
        for child in children:
            if not child.name.startswith(stem) or TMP_MARKER in child.name:
                continue
            key = child.as_posix()[root_len:]
            if child.is_dir():
                if recursive:
                    for f in self._walk(child):
                        with contextlib.suppress(FileNotFoundError):
                            entries.append(self._info(f, f.as_posix()[root_len:]))
                else:
                    entries.append(ObjectInfo(key=key + "/", is_dir=True))
            elif child.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entries.append(self._info(child, key))
        entries.sort(key=lambda o: o.key)
        yield from entries

    def stat(self, key: str) -> ObjectInfo:
        return self._info(self._file(key), key)

    def exists(self, key: str) -> bool:
        return bool(key) and self._path(key).is_file()

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> int:
        n = super().delete_prefix(prefix)
        # a prefix has no existence of its own in an object store: drop the directories it leaves empty
        top = self._path(prefix.rstrip("/")) if prefix.strip("/") else None
        if top is not None and top.is_dir():
            for dirpath, _, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        return n

    def copy_object(self, src_key: str, dst_key: str) -> None:
        src = self._file(src_key)
        try:
            self._copy(src, self._path(dst_key), None)
        except OSError as exc:
            raise StorageError(f"{self.uri(dst_key)}: cannot write: {exc.strerror or exc}") from exc
