"""S3-specific behaviour against real endpoints on 127.0.0.1: errors, credentials, retries, bucket creation."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from minio.error import S3Error

from firm.config import FirmSettings, get_settings
from firm.errors import StorageError
from firm.processes import free_port
from firm.storage import (
    RetryPolicy,
    S3Store,
    fetch_dir,
    is_published,
    latest,
    open_store,
    publish_dir,
    read_bytes,
)
from firm.storage.s3 import endpoint_from_settings, make_client


def test_missing_bucket_errors_name_the_uri(s3_env: dict[str, str], tmp_path: Path) -> None:
    uri = "s3://no-such-bucket-here/ckpt/step-1"
    for op in (
        lambda: read_bytes(uri + "/w.bin"),
        lambda: open_store(uri)[0].exists("ckpt/step-1/w.bin"),
        lambda: list(open_store(uri)[0].list("ckpt/")),
        lambda: latest("s3://no-such-bucket-here/ckpt"),
        lambda: fetch_dir(uri, tmp_path / "out"),
    ):
        with pytest.raises(StorageError, match="no such bucket 'no-such-bucket-here'") as info:
            op()
        assert "s3://no-such-bucket-here/" in str(info.value)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    with pytest.raises(StorageError, match="no such bucket"):
        publish_dir(tmp_path / "d", uri)
    assert not is_published(uri)  # nothing is published where the bucket does not exist yet


def test_unreachable_endpoint_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, s3_env: dict[str, str]
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("FIRM_S3_ENDPOINT", f"127.0.0.1:{port}")
    get_settings(fresh=True)
    start = time.monotonic()
    with pytest.raises(StorageError, match=rf"s3://somebucket/x: cannot reach S3 endpoint 127.0.0.1:{port}"):
        read_bytes("s3://somebucket/x")
    assert time.monotonic() - start < 10  # retried with backoff, but bounded


def test_missing_credentials(monkeypatch: pytest.MonkeyPatch, s3_env: dict[str, str]) -> None:
    monkeypatch.delenv("FIRM_S3_SECRET_KEY")
    get_settings(fresh=True)
    with pytest.raises(StorageError, match="missing S3 credentials: set FIRM_S3_SECRET_KEY") as info:
        read_bytes(f"s3://{s3_env['bucket']}/x")
    assert s3_env["bucket"] in str(info.value)


def test_client_uses_settings_endpoint_and_keys() -> None:
    s = FirmSettings(
        s3_endpoint="https://minio.example:9000",
        s3_access_key="AK-from-settings",
        s3_secret_key="SK-from-settings",
        s3_secure=False,
        s3_region="eu-west-1",
    )
    ep = endpoint_from_settings(s)
    assert (ep.host, ep.secure, ep.region) == ("minio.example:9000", True, "eu-west-1")  # scheme wins
    creds = make_client(s)._provider.retrieve()
    assert (creds.access_key, creds.secret_key) == ("AK-from-settings", "SK-from-settings")
    with pytest.raises(StorageError, match="invalid FIRM_S3_ENDPOINT"):
        endpoint_from_settings(FirmSettings(s3_endpoint="ftp://x:1"))


@pytest.fixture
def authed_moto() -> Iterator[tuple[str, str, str]]:
    """A moto server (own process) that checks signatures; yields (endpoint, access key, secret key)."""
    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        iam = boto3.client(
            "iam",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="firm")
        iam.put_user_policy(
            UserName="firm",
            PolicyName="s3",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}',
        )
        key = iam.create_access_key(UserName="firm")["AccessKey"]
        yield f"127.0.0.1:{port}", key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_credentials_from_settings_are_checked_by_the_server(
    authed_moto: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint, access, secret = authed_moto
    for k, v in {
        "FIRM_HOME": str(tmp_path),
        "FIRM_S3_ENDPOINT": endpoint,
        "FIRM_S3_ACCESS_KEY": access,
        "FIRM_S3_SECRET_KEY": secret,
        "FIRM_S3_SECURE": "false",
        "FIRM_S3_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    S3Store.from_settings("authed", get_settings(fresh=True)).make_bucket()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w.bin").write_bytes(b"weights")
    publish_dir(tmp_path / "d", "s3://authed/m")
    assert read_bytes("s3://authed/m/w.bin") == b"weights"
    monkeypatch.setenv("FIRM_S3_SECRET_KEY", "not-the-secret")
    get_settings(fresh=True)
    with pytest.raises(StorageError, match=r"s3://authed/m/w.bin: access denied .*FIRM_S3_SECRET_KEY"):
        read_bytes("s3://authed/m/w.bin")
    get_settings(fresh=True)


class _FlakyProxy(ThreadingHTTPServer):
    """Forwards HTTP to an S3 endpoint, answering the first `failures` requests with 503 SlowDown."""

    daemon_threads = True

    def __init__(self, upstream: str, failures: int) -> None:
        self.upstream, self.failures, self.requests = upstream, failures, 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _FlakyHandler)


class _FlakyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FlakyProxy

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.requests += 1
            fail = self.server.failures > 0
            self.server.failures -= int(fail)
        if fail:
            err = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(err)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(err)
            return
        conn = http.client.HTTPConnection(self.server.upstream, timeout=30)
        conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", resp.getheader("Content-Length") or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


@pytest.fixture
def flaky(s3_bucket: str, s3_endpoint: str) -> Iterator[_FlakyProxy]:
    proxy = _FlakyProxy(s3_endpoint, failures=0)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def _store_via(proxy: _FlakyProxy, bucket: str, attempts: int) -> S3Store:
    settings = get_settings().model_copy(update={"s3_endpoint": f"127.0.0.1:{proxy.server_address[1]}"})
    return S3Store(
        make_client(settings), bucket, "proxy", "us-east-1", RetryPolicy(attempts, base_delay=0.01)
    )


def test_transient_errors_are_retried_with_backoff(flaky: _FlakyProxy, s3_bucket: str) -> None:
    store = _store_via(flaky, s3_bucket, attempts=4)
    flaky.failures = 3  # more than the SDK's own single retry: our backoff loop must carry it
    store.put_bytes("r/obj", b"payload")
    assert flaky.failures == 0 and flaky.requests == 4
    flaky.failures = 3
    assert store.get_bytes("r/obj") == b"payload"
    flaky.failures = 3
    assert [o.key for o in store.list("r/")] == ["r/obj"]
    flaky.failures = 100
    with pytest.raises(StorageError, match=f"s3://{s3_bucket}/r/obj: .*SlowDown"):
        store.get_bytes("r/obj")


@pytest.mark.parametrize("region, code", [("us-east-1", None), ("eu-west-1", "BucketAlreadyOwnedByYou")])
def test_make_bucket_is_idempotent_on_aws_and_minio_semantics(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, region: str, code: str | None
) -> None:
    monkeypatch.setenv("FIRM_S3_REGION", region)
    settings = get_settings(fresh=True)
    store = S3Store.from_settings(s3_env["bucket"], settings)
    assert store.ensure_bucket() is True
    # what the server answers to re-creating an owned bucket: 200 (AWS us-east-1) or BucketAlreadyOwnedByYou
    try:
        store.client.make_bucket(store.bucket, region)
        answered = None
    except S3Error as exc:
        answered = exc.code
    assert answered == code
    store.make_bucket()  # both answers are success
    assert store.ensure_bucket() is False
    assert store.bucket_exists()


def test_s3_endpoint_that_is_not_s3(monkeypatch: pytest.MonkeyPatch, s3_env: dict[str, str]) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]

        def answer() -> None:
            conn, _ = srv.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello")
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        monkeypatch.setenv("FIRM_S3_ENDPOINT", f"127.0.0.1:{port}")
        get_settings(fresh=True)
        store, key = open_store("s3://somebucket/")
        with pytest.raises(StorageError, match="somebucket"):
            list(store.list(key))


_LOCAL_ONLY = """
import sys
from pathlib import Path
from firm.storage import copy, fetch_dir, latest, publish_dir, read_manifest

src, home = Path(sys.argv[1]), Path(sys.argv[2])
(src / "w.bin").write_bytes(b"weights")
publish_dir(src, (home / "ckpt" / "step-1").as_uri())
assert latest((home / "ckpt").as_uri()).endswith("step-1")
assert read_manifest((home / "ckpt" / "step-1").as_uri()).files
fetch_dir((home / "ckpt" / "step-1").as_uri(), home / "fetched")
copy((home / "ckpt").as_uri(), (home / "copy").as_uri())
print("local", "minio" in sys.modules)
from firm.storage import S3Store, open_store

store, key = open_store("s3://some-bucket/x")  # builds the client; no request is made
print("s3", "minio" in sys.modules, isinstance(store, S3Store), key)
"""


def test_the_s3_sdk_loads_only_where_an_s3_store_is_opened(tmp_path: Path) -> None:
    """A command or training rank that reads and writes `file://` stores does not import the S3 SDK (~0.1 s per
    process, and the suite starts ~300): `firm.storage` loads it on the first `s3://` store."""
    (tmp_path / "src").mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FIRM_S3")},
        "FIRM_S3_ENDPOINT": "http://127.0.0.1:9", "FIRM_S3_ACCESS_KEY": "k", "FIRM_S3_SECRET_KEY": "s",
    }  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-c", _LOCAL_ONLY, str(tmp_path / "src"), str(tmp_path / "home")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["local False", "s3 True True x"]
