"""`MANIFEST.json`: the record that makes a published directory visible (files, sizes, sha256, when, by whom)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import PurePosixPath

from pydantic import Field, ValidationError, field_validator, model_validator

from firm.errors import StorageError
from firm.schemas import Record
from firm.storage.base import MANIFEST_NAME

MANIFEST_VERSION = 1


class ManifestFile(Record):
    """One published file: its path relative to the directory, size in bytes and hex sha256."""

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or any(part in ("", ".", "..") for part in v.split("/")) or "\\" in v:
            raise ValueError(f"manifest path {v!r} must be relative, without '.' or '..' segments")
        if v == MANIFEST_NAME:
            raise ValueError(f"{MANIFEST_NAME} cannot list itself")
        return v


class Manifest(Record):
    """The manifest written last by `publish_dir`; readers resolve a directory only when it exists."""

    version: int = MANIFEST_VERSION
    created_at: datetime
    producer: str
    files: list[ManifestFile]

    @field_validator("created_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        seen: set[str] = set()
        for f in self.files:
            if f.path in seen:
                raise ValueError(f"duplicate file {f.path!r} in manifest")
            seen.add(f.path)
        return self

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_bytes(self) -> bytes:
        return (self.model_dump_json(indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        """Parse a manifest; `StorageError` naming `where` if it is not a valid FIRM manifest."""
        try:
            return cls.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise StorageError(f"{where}: invalid {MANIFEST_NAME}: {msg}") from exc


def now_utc() -> datetime:
    return datetime.now(UTC)
