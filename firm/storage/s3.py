"""The S3 object store behind `s3://bucket/key` URIs (MinIO or any S3), through the `minio` SDK.

Endpoint and credentials come from `FirmSettings` (`FIRM_S3_ENDPOINT`, `FIRM_S3_ACCESS_KEY`, `FIRM_S3_SECRET_KEY`,
`FIRM_S3_SECURE`, `FIRM_S3_REGION`). Transient failures (connection errors, 5xx, SlowDown) are retried with
exponential backoff; everything else becomes a `StorageError` naming the URI.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from xml.etree.ElementTree import ParseError as XMLParseError

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from firm.config import FirmSettings
from firm.errors import MissingBucketError, StorageError
from firm.storage.base import CHUNK, ByteCallback, ObjectInfo, ObjectStore, atomic_path

T = TypeVar("T")

PART_SIZE = (
    8 * 1024 * 1024
)  # multipart part size (S3 minimum is 5 MiB); files above it go up in parallel parts
MAX_PARTS = 10_000
PARALLEL_UPLOADS = 4
AWS_ENDPOINT = "s3.amazonaws.com"

TRANSIENT_CODES = frozenset(
    {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "OperationAborted", "Throttling"}
)
DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "ExpiredToken"}
)


# what the SDK raises for server answers and network failures (anything else is a bug or a local error)
_SDK_ERRORS = (S3Error, ServerError, InvalidResponseError, XMLParseError, urllib3.exceptions.HTTPError)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and exponential backoff (base_delay * 2**n) for transient S3/network errors."""

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 4.0


@dataclass(frozen=True)
class S3Endpoint:
    host: str  # host:port
    secure: bool
    region: str | None


def endpoint_from_settings(settings: FirmSettings) -> S3Endpoint:
    """`FIRM_S3_ENDPOINT` as `host:port` or `http(s)://host:port` (the scheme then overrides `FIRM_S3_SECURE`)."""
    raw = (settings.s3_endpoint or AWS_ENDPOINT).strip()
    secure = settings.s3_secure
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise StorageError(f"invalid FIRM_S3_ENDPOINT {raw!r}: expected host:port or http(s)://host:port")
        secure, raw = parts.scheme == "https", parts.netloc
    if not raw or "/" in raw:
        raise StorageError(f"invalid FIRM_S3_ENDPOINT {raw!r}: expected host:port or http(s)://host:port")
    return S3Endpoint(host=raw, secure=secure, region=settings.s3_region)


def make_client(settings: FirmSettings, what: str = "S3") -> Minio:
    """A `Minio` client built from the settings' endpoint and keys; `StorageError` if credentials are missing."""
    ep = endpoint_from_settings(settings)
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else ""
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else ""
    if not access or not secret:
        missing = [n for n, v in (("FIRM_S3_ACCESS_KEY", access), ("FIRM_S3_SECRET_KEY", secret)) if not v]
        raise StorageError(f"{what}: missing S3 credentials: set {' and '.join(missing)}")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=120.0),
        maxsize=16,
        # one quick in-library retry per request (also for each multipart part); RetryPolicy does the backoff
        retries=urllib3.Retry(
            total=1, backoff_factor=0.1, status_forcelist=[502, 503, 504], raise_on_status=False
        ),
    )
    return Minio(
        ep.host, access_key=access, secret_key=secret, secure=ep.secure, region=ep.region, http_client=http
    )


def part_size_for(size: int) -> int:
    """Multipart part size: `PART_SIZE`, grown (in MiB steps) so that no upload needs more than 10,000 parts."""
    need = -(-size // MAX_PARTS)
    mib = 1024 * 1024
    return max(PART_SIZE, -(-need // mib) * mib)


class _MinioProgress:
    """Adapter from minio's progress protocol (`set_meta`/`update`) to a byte callback."""

    def __init__(self, on_bytes: ByteCallback) -> None:
        self._on_bytes = on_bytes

    def set_meta(self, object_name: str, total_length: int) -> None:
        pass

    def update(self, size: int) -> None:
        self._on_bytes(size)


class S3Store(ObjectStore):
    """The objects of one S3 bucket."""

    scheme = "s3"

    def __init__(
        self,
        client: Minio,
        bucket: str,
        endpoint: str = "",
        region: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.region = region
        self.bucket = bucket
        self.endpoint = endpoint
        self.retry = retry or RetryPolicy()

    @classmethod
    def from_settings(cls, bucket: str, settings: FirmSettings, retry: RetryPolicy | None = None) -> S3Store:
        ep = endpoint_from_settings(settings)
        client = make_client(settings, what=f"s3://{bucket}")
        return cls(client, bucket, ep.host, ep.region, retry)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- error handling --------------------------------------------------------------------------------------------

    def _no_bucket(self, where: str) -> str:
        return (
            f"{where}: no such bucket {self.bucket!r} on {self.endpoint} "
            "(create it with `firmctl storage init` or fix the URI)"
        )

    def _error(self, exc: Exception, key: str | None) -> StorageError:
        where = self.uri(key) if key is not None else f"s3://{self.bucket}"
        if isinstance(exc, S3Error):
            code = exc.code
            if code == "NoSuchBucket":
                return MissingBucketError(self._no_bucket(where))
            if code in ("NoSuchKey", "ResourceNotFound"):
                return StorageError(f"{where}: no such object")
            if code in DENIED_CODES:
                return StorageError(
                    f"{where}: access denied by {self.endpoint} ({code}); "
                    "check FIRM_S3_ACCESS_KEY / FIRM_S3_SECRET_KEY and the bucket policy"
                )
            return StorageError(f"{where}: S3 error {code}: {exc.message}")
        if isinstance(exc, ServerError):
            return StorageError(f"{where}: S3 endpoint {self.endpoint} failed with HTTP {exc.status_code}")
        if isinstance(exc, InvalidResponseError | XMLParseError):
            return StorageError(f"{where}: {self.endpoint} did not answer like an S3 endpoint")
        if isinstance(exc, urllib3.exceptions.HTTPError):
            reason = getattr(exc, "reason", None) or exc
            return StorageError(f"{where}: cannot reach S3 endpoint {self.endpoint}: {reason}")
        return StorageError(f"{where}: {exc}")

    @staticmethod
    def _transient(exc: Exception) -> bool:
        if isinstance(exc, S3Error):
            return exc.code in TRANSIENT_CODES
        return isinstance(exc, ServerError | urllib3.exceptions.HTTPError)

    def _call(self, key: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one SDK operation with retries/backoff on transient errors; map failures to `StorageError`."""
        for attempt in range(self.retry.attempts):
            try:
                return fn(*args, **kwargs)
            except _SDK_ERRORS as exc:
                if not self._transient(exc) or attempt == self.retry.attempts - 1:
                    raise self._error(exc, key) from exc
            except ValueError as exc:  # the SDK's own argument checks (e.g. a '..' segment in a key)
                where = self.uri(key) if key is not None else f"s3://{self.bucket}"
                raise StorageError(f"{where}: {exc}") from exc
            time.sleep(min(self.retry.max_delay, self.retry.base_delay * 2**attempt))
        raise AssertionError("unreachable")

    # -- objects ---------------------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            key,
            lambda: self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), part_size=PART_SIZE
            ),
        )

    def get_bytes(self, key: str) -> bytes:
        def fetch() -> bytes:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call(key, fetch)

    def put_file(self, key: str, path: str | Path, on_bytes: ByteCallback | None = None) -> None:
        src = Path(path)
        if not src.is_file():
            raise StorageError(f"{src}: no such local file")
        size = src.stat().st_size
        progress = _MinioProgress(on_bytes) if on_bytes else None
        self._call(
            key,
            self.client.fput_object,
            self.bucket,
            key,
            str(src),
            part_size=part_size_for(size),
            num_parallel_uploads=PARALLEL_UPLOADS,
            progress=progress,
        )

    def get_file(self, key: str, path: str | Path, on_bytes: ByteCallback | None = None) -> None:
        dst = Path(path)

        def fetch() -> None:
            resp = self.client.get_object(self.bucket, key)
            try:
                with atomic_path(dst) as tmp, open(tmp, "wb") as f:
                    for block in resp.stream(CHUNK):
                        f.write(block)
                        if on_bytes:
                            on_bytes(len(block))
            finally:
                resp.close()
                resp.release_conn()

        self._call(key, fetch)

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        # minio follows continuation tokens itself (1,000 keys per page); a transient failure mid-listing
        # restarts after the last key seen
        after: str | None = None
        attempt = 0
        while True:
            try:
                for obj in self.client.list_objects(
                    self.bucket, prefix=prefix or None, recursive=recursive, start_after=after
                ):
                    attempt = 0
                    key = obj.object_name or ""
                    # resume after a whole common prefix: "a/" -> "a0" skips every key under "a/"
                    after = key[:-1] + "0" if obj.is_dir else key
                    yield ObjectInfo(
                        key=key,
                        size=obj.size or 0,
                        is_dir=bool(obj.is_dir),
                        last_modified=obj.last_modified,
                        etag=obj.etag,
                    )
                return
            except _SDK_ERRORS as exc:
                if not self._transient(exc) or attempt >= self.retry.attempts - 1:
                    raise self._error(exc, prefix) from exc
            time.sleep(min(self.retry.max_delay, self.retry.base_delay * 2**attempt))
            attempt += 1

    def stat(self, key: str) -> ObjectInfo:
        st = self._call(key, self.client.stat_object, self.bucket, key)
        return ObjectInfo(key=key, size=st.size or 0, last_modified=st.last_modified, etag=st.etag)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except StorageError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code in ("NoSuchKey", "ResourceNotFound"):
                # a HEAD answer has no body: tell a missing object from a missing bucket
                if not self.bucket_exists():
                    raise MissingBucketError(self._no_bucket(self.uri(key))) from exc
                return False
            raise
        return True

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [DeleteObject(k) for k in keys[start : start + 1000]]
            errors = self._call(keys[start], lambda b=batch: list(self.client.remove_objects(self.bucket, b)))
            if errors:
                first = errors[0]
                raise StorageError(f"{self.uri(first.name)}: delete failed: {first.code} {first.message}")

    def copy_object(self, src_key: str, dst_key: str) -> None:
        self.copy_from(self.bucket, src_key, dst_key)

    def copy_from(self, src_bucket: str, src_key: str, dst_key: str) -> None:
        """Server-side copy of `s3://src_bucket/src_key` (same endpoint) to `dst_key` in this bucket."""
        try:
            self._call(
                dst_key, self.client.copy_object, self.bucket, dst_key, CopySource(src_bucket, src_key)
            )
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code in ("NoSuchKey", "ResourceNotFound"):
                raise StorageError(f"s3://{src_bucket}/{src_key}: no such object") from cause
            raise

    # -- buckets ---------------------------------------------------------------------------------------------------

    def bucket_exists(self) -> bool:
        return self._call(None, self.client.bucket_exists, self.bucket)

    def make_bucket(self) -> None:
        """Create the bucket, succeeding if this account already owns it.

        Both semantics are handled: AWS us-east-1 answers 200 to re-creating an owned bucket, MinIO and the other
        AWS regions answer BucketAlreadyOwnedByYou.
        """
        try:
            self._call(None, self.client.make_bucket, self.bucket, self.region)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code == "BucketAlreadyOwnedByYou":
                return
            if isinstance(cause, S3Error) and cause.code == "BucketAlreadyExists":
                raise StorageError(f"s3://{self.bucket}: bucket name is taken by another account") from cause
            raise

    def ensure_bucket(self) -> bool:
        """Create the bucket unless it exists; True if it was missing."""
        if self.bucket_exists():
            return False
        self.make_bucket()
        return True
