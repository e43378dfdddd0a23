"""Object-store URIs: `file:///abs/path/...` and `s3://bucket/key...`, plus plain local paths where allowed.

A `StoreURI` splits a URI into scheme, bucket (S3 only) and key. For `file://` the key is the absolute path without
its leading slash, so every local path is a key of the one local store rooted at `/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

from firm.errors import StorageError

SCHEMES = ("file", "s3")
# S3 bucket naming rules (virtual-host safe subset): 3-63 chars, lowercase letters, digits, dots and hyphens.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StoreURI:
    """A parsed object-store URI. `key` has no leading slash; a trailing slash marks a prefix ("directory")."""

    scheme: str
    bucket: str
    key: str

    def __str__(self) -> str:
        if self.scheme == "file":
            return "file:///" + quote(self.key, safe="/-_.~+=,@:")
        return f"s3://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        """Last path component (empty for a bucket or the filesystem root)."""
        return PurePosixPath(self.key).name

    @property
    def local_path(self) -> Path:
        """The filesystem path of a `file://` URI."""
        if self.scheme != "file":
            raise StorageError(f"{self}: not a local (file://) URI")
        return Path("/" + self.key)

    def join(self, *parts: str) -> StoreURI:
        """Append path components (`uri.join("step-10", "MANIFEST.json")`)."""
        key = self.key
        for part in parts:
            part = part.strip("/")
            if not part:
                continue
            key = f"{key.rstrip('/')}/{part}" if key.rstrip("/") else part
        return StoreURI(self.scheme, self.bucket, key)

    def as_prefix(self) -> StoreURI:
        """The same URI with a trailing slash (the "directory" under which published files live)."""
        if not self.key or self.key.endswith("/"):
            return self
        return StoreURI(self.scheme, self.bucket, self.key + "/")


def is_uri(value: str | Path) -> bool:
    """True when `value` looks like `scheme://...` (as opposed to a plain local path)."""
    return isinstance(value, str) and "://" in value


def _check_key(uri: str, key: str) -> str:
    if "\x00" in key:
        raise StorageError(f"malformed URI {uri!r}: NUL byte in path")
    parts = key.split("/")
    inner = parts[:-1] if key.endswith("/") else parts
    if key and any(p in ("", ".", "..") for p in inner):
        raise StorageError(f"malformed URI {uri!r}: empty, '.' or '..' path segment")
    return key


def parse_uri(uri: str | Path) -> StoreURI:
    """Parse a `file://` or `s3://` URI, or a plain local path (turned into a `file://` URI).

    Raises `StorageError` naming the input for an unknown scheme or a malformed URI.
    """
    if isinstance(uri, Path) or not is_uri(uri):
        path = Path(uri).expanduser()
        if str(uri) == "":
            raise StorageError("empty path or URI")
        text = str(path.absolute())
        key = text.lstrip("/")
        if str(uri).endswith("/") and key:
            key += "/"
        return StoreURI("file", "", key)
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise StorageError(f"unknown URI scheme {scheme!r} in {uri!r} (expected file:// or s3://)")
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        raise StorageError(f"malformed URI {uri!r}: '?' and '#' are not allowed")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(
                f"malformed file URI {uri!r}: expected file:///absolute/path (host {parts.netloc!r} not allowed)"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise StorageError(f"malformed file URI {uri!r}: path must be absolute")
        return StoreURI("file", "", _check_key(uri, path.lstrip("/")))
    bucket = parts.netloc
    if not bucket:
        raise StorageError(f"malformed S3 URI {uri!r}: expected s3://bucket/key")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(
            f"malformed S3 URI {uri!r}: invalid bucket name {bucket!r} "
            "(3-63 lowercase letters, digits, dots or hyphens)"
        )
    key = parts.path[1:] if parts.path.startswith("/") else parts.path
    if key.startswith("/"):
        raise StorageError(f"malformed S3 URI {uri!r}: key must not start with '/'")
    return StoreURI("s3", bucket, _check_key(uri, key))


def to_uri(path_or_uri: str | Path) -> str:
    """Normalise a local path or URI to its URI string."""
    return str(parse_uri(path_or_uri))


def join_uri(uri: str, *parts: str) -> str:
    """`join_uri("s3://b/ckpt", "step-10")` → `"s3://b/ckpt/step-10"`."""
    return str(parse_uri(uri).join(*parts))
