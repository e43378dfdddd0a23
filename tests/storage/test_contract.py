"""The object-store contract, run against the local store (file://) and a real S3 endpoint (moto over HTTP)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from firm.errors import StorageError
from firm.storage import (
    MANIFEST_NAME,
    Manifest,
    fetch_dir,
    is_published,
    join_uri,
    latest,
    open_store,
    publish_dir,
    read_bytes,
    read_manifest,
    resolve_local,
    write_bytes,
)
from firm.storage.s3 import PART_SIZE

REPO = Path(__file__).resolve().parents[2]


def make_dir(path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


def test_bytes_roundtrip_exists_stat_overwrite(root: str) -> None:
    store, key = open_store(root)
    k = key + "a/b.txt"
    assert not store.exists(k)
    store.put_bytes(k, b"first")
    assert store.exists(k) and store.get_bytes(k) == b"first"
    store.put_bytes(k, b"second version")
    assert store.get_bytes(k) == b"second version"
    assert store.stat(k).size == len(b"second version")
    assert store.uri(k) == root + "a/b.txt"
    # the module-level helpers address single objects by URI (e.g. an image)
    uri = write_bytes(root + "img/x.png", b"\x89PNG fake")
    assert uri == root + "img/x.png" and read_bytes(uri) == b"\x89PNG fake"


def test_missing_object_error_names_uri(root: str, tmp_path: Path) -> None:
    store, key = open_store(root)
    with pytest.raises(StorageError, match="no such object") as info:
        store.get_bytes(key + "nope.bin")
    assert root + "nope.bin" in str(info.value)
    with pytest.raises(StorageError, match="no such object"):
        read_bytes(root + "nope.bin")
    with pytest.raises(StorageError, match="no such object"):
        store.get_file(key + "nope.bin", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_large_file_multipart_up_streaming_down(root: str, big_file: Path, tmp_path: Path) -> None:
    store, key = open_store(root)
    seen: list[int] = []
    store.put_file(key + "ckpt/weights.bin", big_file, on_bytes=seen.append)
    assert sum(seen) == big_file.stat().st_size
    info = store.stat(key + "ckpt/weights.bin")
    assert info.size == big_file.stat().st_size
    if root.startswith("s3://"):
        # S3 multipart ETags are md5-of-md5s with a part count suffix
        parts = -(-info.size // PART_SIZE)
        assert info.etag is not None and info.etag.endswith(f"-{parts}") and parts >= 3
    down: list[int] = []
    out = tmp_path / "down" / "weights.bin"
    store.get_file(key + "ckpt/weights.bin", out, on_bytes=down.append)
    assert sum(down) == info.size and len(down) > 1  # streamed in chunks
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(big_file.read_bytes()).digest()
    assert not [p for p in out.parent.iterdir() if p.name != "weights.bin"]  # no temp files left behind


def test_listing_past_1000_keys(root: str) -> None:
    store, key = open_store(root)
    n = 1005
    keys = [f"{key}many/k{i:05d}" for i in range(n)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"x"), keys))
    store.put_bytes(key + "many/sub/inner", b"yy")
    store.put_bytes(key + "many-other/z", b"z")
    listed = [o.key for o in store.list(key + "many/")]
    assert listed == sorted([*keys, key + "many/sub/inner"])
    # plain string-prefix semantics (as in S3): "many" also matches "many-other/"
    assert len(list(store.list(key + "many"))) == n + 2
    top = list(store.list(key + "many/", recursive=False))
    assert [o.key for o in top if o.is_dir] == [key + "many/sub/"]
    assert sum(not o.is_dir for o in top) == n


def test_delete_and_copy_prefix(root: str) -> None:
    store, key = open_store(root)
    for name in ("p/a", "p/b/c", "p/" + MANIFEST_NAME, "pp/keep"):
        store.put_bytes(key + name, name.encode())
    assert store.copy_prefix(key + "p/", key + "q/") == 3
    assert store.get_bytes(key + "q/b/c") == b"p/b/c"
    assert store.get_bytes(key + "q/" + MANIFEST_NAME) == ("p/" + MANIFEST_NAME).encode()
    assert store.delete_prefix(key + "p/") == 3
    assert [o.key for o in store.list(key + "p")] == [key + "pp/keep"]
    assert store.exists(key + "q/a")


def test_publish_fetch_roundtrip_and_latest(root: str, tmp_path: Path) -> None:
    ckpts = root + "checkpoints/run-1"
    assert latest(ckpts) is None
    for step in (9, 10):
        src = make_dir(
            tmp_path / f"s{step}", {"model.safetensors": os.urandom(1000 + step), "cfg/a.json": b"{}"}
        )
        m = publish_dir(src, f"{ckpts}/step-{step}", producer="test")
        assert [f.path for f in m.files] == ["cfg/a.json", "model.safetensors"]
        assert m.files[1].sha256 == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
        assert m.producer == "test" and m.created_at.tzinfo is not None
    # a newer directory without a manifest is invisible
    store, key = open_store(ckpts)
    store.put_bytes(key + "/step-11/model.safetensors", b"partial")
    assert latest(ckpts) == f"{ckpts}/step-10"
    assert latest(ckpts + "/") == f"{ckpts}/step-10"
    with pytest.raises(StorageError, match=r"no MANIFEST\.json") as info:
        fetch_dir(f"{ckpts}/step-11", tmp_path / "nope")
    assert f"{ckpts}/step-11" in str(info.value)
    assert not (tmp_path / "nope").exists()

    out = tmp_path / "fetched"
    m = fetch_dir(f"{ckpts}/step-10", out)
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "s10" / "model.safetensors").read_bytes()
    assert Manifest.model_validate_json((out / MANIFEST_NAME).read_text()) == m
    assert read_manifest(f"{ckpts}/step-10") == m

    # re-publishing the same prefix replaces the version atomically (old manifest removed first)
    src = make_dir(tmp_path / "s9b", {"model.safetensors": b"v2"})
    publish_dir(src, f"{ckpts}/step-9")
    assert latest(ckpts) == f"{ckpts}/step-9"
    assert [f.path for f in read_manifest(f"{ckpts}/step-9").files] == ["model.safetensors"]


def test_latest_ties_break_by_natural_name(root: str, tmp_path: Path) -> None:
    store, key = open_store(root)
    same = "2026-01-01T00:00:00+00:00"
    sha = hashlib.sha256(b"").hexdigest()
    for step in (9, 10, 2):
        body = {"created_at": same, "producer": "t", "files": [{"path": "f", "size": 0, "sha256": sha}]}
        store.put_bytes(f"{key}c/step-{step}/f", b"")
        store.put_bytes(f"{key}c/step-{step}/{MANIFEST_NAME}", json.dumps(body).encode())
    assert latest(root + "c") == root + "c/step-10"


def _wait_for_lines(proc: subprocess.Popen[str], prefix: str, n: int, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while len(lines) < n and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            lines.append(line)
    return lines


def test_killed_publish_leaves_previous_version_latest(root: str, tmp_path: Path) -> None:
    ckpts = root + "checkpoints/run-k"
    good = make_dir(tmp_path / "good", {"w.bin": b"good weights"})
    publish_dir(good, f"{ckpts}/step-1")
    files = {f"shard-{i:02d}.bin": os.urandom(2048) for i in range(16)}
    doomed = make_dir(tmp_path / "doomed", files)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.storage._slow_publish", str(doomed), f"{ckpts}/step-2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        uploaded = _wait_for_lines(proc, "uploaded", 3, timeout=60)
        assert len(uploaded) == 3, proc.stderr.read() if proc.poll() is not None else "child too slow"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    store, key = open_store(f"{ckpts}/step-2/")
    present = [o.key for o in store.list(key)]
    assert 3 <= len(present) < len(files)  # killed half-way: some files are there ...
    assert not store.exists(key + MANIFEST_NAME)  # ... but no manifest
    assert latest(ckpts) == f"{ckpts}/step-1"
    with pytest.raises(StorageError, match=r"no MANIFEST\.json"):
        fetch_dir(f"{ckpts}/step-2", tmp_path / "out")


def test_failed_publish_writes_no_manifest(root: str, tmp_path: Path) -> None:
    ckpts = root + "checkpoints/run-f"
    publish_dir(make_dir(tmp_path / "v1", {"w.bin": b"v1"}), f"{ckpts}/step-1")
    src = make_dir(tmp_path / "v2", {f"f{i}.bin": b"data" for i in range(6)})
    (src / "zz-unreadable.bin").symlink_to(tmp_path / "does-not-exist")  # fails after the others were read
    with pytest.raises(StorageError, match=r"zz-unreadable\.bin"):
        publish_dir(src, f"{ckpts}/step-2", workers=1)
    store, key = open_store(f"{ckpts}/step-2/")
    assert store.exists(key + "f0.bin")
    assert not store.exists(key + MANIFEST_NAME)
    assert latest(ckpts) == f"{ckpts}/step-1"
    assert is_published(f"{ckpts}/step-1") and not is_published(f"{ckpts}/step-2")  # files without a manifest


def test_checksum_mismatch_detected_and_nothing_visible(root: str, tmp_path: Path) -> None:
    uri = root + "datasets/shards"
    src = make_dir(tmp_path / "src", {"a.jsonl": b'{"x": 1}\n', "b.jsonl": b'{"x": 2}\n'})
    publish_dir(src, uri)
    store, key = open_store(uri + "/")
    store.put_bytes(key + "b.jsonl", b'{"x": 3}\n')  # same size, different bytes
    dest = tmp_path / "dest"
    with pytest.raises(StorageError, match="checksum mismatch") as info:
        fetch_dir(uri, dest)
    assert join_uri(uri, "b.jsonl") in str(info.value)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dest")]  # staging cleaned up
    # an existing destination stays untouched
    dest.mkdir()
    (dest / "a.jsonl").write_bytes(b"old")
    with pytest.raises(StorageError, match="checksum mismatch"):
        fetch_dir(uri, dest, overwrite=True)
    assert (dest / "a.jsonl").read_bytes() == b"old"
    store.put_bytes(key + "b.jsonl", b"short")
    with pytest.raises(StorageError, match="size mismatch"):
        resolve_local(uri)


def test_resolve_local_caches_verified_copy(root: str, tmp_path: Path, firm_home: Path) -> None:
    uri = root + "models/critic"
    publish_dir(make_dir(tmp_path / "m1", {"config.json": b'{"v": 1}', "w.bin": b"w1"}), uri)
    local = resolve_local(uri)
    assert local.is_relative_to(firm_home / "cache")
    assert (local / "config.json").read_bytes() == b'{"v": 1}'
    # a verified cache is reused: the remote data object is not read again
    store, key = open_store(uri + "/")
    store.delete([key + "w.bin"])
    assert resolve_local(uri) == local and (local / "w.bin").read_bytes() == b"w1"
    # a new publication invalidates the cache
    publish_dir(make_dir(tmp_path / "m2", {"config.json": b'{"v": 2}'}), uri)
    again = resolve_local(uri)
    assert again == local and (again / "config.json").read_bytes() == b'{"v": 2}'
    assert not (again / "w.bin").exists()
    # plain local paths pass through untouched
    assert resolve_local(str(tmp_path / "m1")) == tmp_path / "m1"


def test_resolve_local_single_object_and_missing(root: str) -> None:
    uri = write_bytes(root + "images/cat.png", b"cat")
    path = resolve_local(uri)
    assert path.read_bytes() == b"cat" and path.name == "cat.png"
    with pytest.raises(StorageError, match=r"no MANIFEST\.json|no such file") as info:
        resolve_local(root + "images/dog.png")
    assert root + "images/dog.png" in str(info.value)


def test_resolve_local_cache_hit_is_sha256_verified(root: str, tmp_path: Path, firm_home: Path) -> None:
    """A cached file damaged in place (same size, so a size check passes) is fetched again, not served; and when
    the published copy is gone too, the damaged cache is refused rather than used."""
    uri = root + "models/critic"
    publish_dir(make_dir(tmp_path / "m1", {"config.json": b'{"v": 1}', "w.bin": b"weights-1"}), uri)
    local = resolve_local(uri)
    (local / "w.bin").write_bytes(b"weights-X")  # same size, different bytes
    assert resolve_local(uri) == local and (local / "w.bin").read_bytes() == b"weights-1"
    (local / "w.bin").write_bytes(b"weights-X")
    store, key = open_store(uri + "/")
    store.delete([key + "w.bin"])
    with pytest.raises(StorageError, match=r"w\.bin"):
        resolve_local(uri)
    assert (local / "w.bin").read_bytes() == b"weights-X"  # nothing half-installed over it
