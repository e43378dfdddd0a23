"""URI parsing and manifest validation (bad input → `StorageError` naming the input)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from firm.errors import StorageError
from firm.storage import MANIFEST_NAME, copy, fetch_dir, join_uri, open_store, parse_uri, publish_dir, to_uri


@pytest.mark.parametrize(
    "uri, scheme, bucket, key",
    [
        ("s3://firm-models/critic/v1/", "s3", "firm-models", "critic/v1/"),
        ("s3://firm-models", "s3", "firm-models", ""),
        ("s3://my.bucket-1/a b/c", "s3", "my.bucket-1", "a b/c"),
        ("file:///tmp/x/y.bin", "file", "", "tmp/x/y.bin"),
        ("file://localhost/tmp/x", "file", "", "tmp/x"),
        ("file:///tmp/with%20space", "file", "", "tmp/with space"),
        ("/abs/dir/", "file", "", "abs/dir/"),
    ],
)
def test_parse(uri: str, scheme: str, bucket: str, key: str) -> None:
    p = parse_uri(uri)
    assert (p.scheme, p.bucket, p.key) == (scheme, bucket, key)
    assert parse_uri(str(p)) == p  # formatting round-trips


def test_relative_paths_become_absolute_file_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert to_uri("sub/f.txt") == (tmp_path / "sub" / "f.txt").as_uri()
    assert join_uri("s3://bkt/ckpt/", "step-1", "MANIFEST.json") == "s3://bkt/ckpt/step-1/MANIFEST.json"


@pytest.mark.parametrize(
    "uri, match",
    [
        ("gs://bucket/x", "unknown URI scheme 'gs'"),
        ("http://host/x", "unknown URI scheme 'http'"),
        ("s3://", "malformed S3 URI"),
        ("s3:///key", "malformed S3 URI"),
        ("s3://ab/x", "invalid bucket name 'ab'"),
        ("s3://Upper/x", "invalid bucket name"),
        ("s3://bkt//x", "must not start with"),
        ("s3://bkt/a//x", "empty"),
        ("s3://bkt/a/../b", r"'\.\.'"),
        ("s3://bkt/x?versionId=1", "not allowed"),
        ("file://relative/path", "malformed file URI"),
        ("", "empty path"),
    ],
)
def test_malformed(uri: str, match: str) -> None:
    with pytest.raises(StorageError, match=match) as info:
        parse_uri(uri)
    if uri:
        assert uri in str(info.value)


def _manifest(files: list[dict[str, object]]) -> bytes:
    return json.dumps({"created_at": "2026-01-01T00:00:00Z", "producer": "evil", "files": files}).encode()


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../b", MANIFEST_NAME, ""])
def test_manifest_paths_cannot_escape_the_destination(tmp_path: Path, path: str) -> None:
    store_dir = tmp_path / "store" / "pub"
    store_dir.mkdir(parents=True)
    (store_dir / MANIFEST_NAME).write_bytes(
        _manifest([{"path": path, "size": 0, "sha256": hashlib.sha256(b"").hexdigest()}])
    )
    with pytest.raises(StorageError, match=r"invalid MANIFEST\.json") as info:
        fetch_dir(store_dir.as_uri(), tmp_path / "out")
    assert str(store_dir / MANIFEST_NAME) in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()


def test_manifest_must_be_valid_json(tmp_path: Path) -> None:
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(StorageError, match=r"invalid MANIFEST\.json"):
        fetch_dir((tmp_path / "pub").as_uri(), tmp_path / "out")


def test_publish_rejects_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not a local directory") as info:
        publish_dir(tmp_path / "nope", (tmp_path / "dst").as_uri())
    assert str(tmp_path / "nope") in str(info.value)


def test_copy_between_buckets_and_local_keeps_manifest_last(s3_bucket: str, tmp_path: Path) -> None:
    from firm.config import get_settings
    from firm.storage import S3Store

    other = s3_bucket[:-2] + "zz"
    S3Store.from_settings(other, get_settings()).make_bucket()
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w")
    publish_dir(src, f"s3://{s3_bucket}/m")
    plan = copy(f"s3://{s3_bucket}/m", f"s3://{other}/copied")  # server-side, across buckets
    assert [i.dst_key for i in plan.items] == ["copied/w.bin", f"copied/{MANIFEST_NAME}"]
    out = tmp_path / "out"
    fetch_dir(f"s3://{other}/copied", out)  # verifies the copied checksums
    assert (out / "w.bin").read_bytes() == b"w"
    store, _ = open_store(f"s3://{other}/")
    assert store.exists(f"copied/{MANIFEST_NAME}")
    with pytest.raises(StorageError, match="same location"):
        copy(f"s3://{other}/copied/w.bin", f"s3://{other}/copied/w.bin")


def test_keys_with_dotdot_segments_are_refused(s3_bucket: str) -> None:
    from firm.storage import LocalStore

    with pytest.raises(StorageError, match=r"'\.\.' segments"):
        LocalStore("/").path("tmp/out/../../etc/passwd")
    store, _ = open_store(f"s3://{s3_bucket}/")
    with pytest.raises(StorageError, match=f"s3://{s3_bucket}/a/../b"):
        store.put_bytes("a/../b", b"x")
