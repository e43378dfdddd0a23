"""`firmctl` foundation commands through Typer's CliRunner: --help, version, doctor, storage ls/cp/init/publish."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firm import __version__
from firm.cli.main import app
from firm.config import get_settings
from firm.processes import free_port

runner = CliRunner()
SECRET = "s3cr3t-never-printed"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def assert_one_error_line(result, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for k in list(os.environ):
        if k.startswith("FIRM_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    get_settings(fresh=True)
    return tmp_path / "home"


@pytest.fixture
def s3(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("FIRM_S3_SECRET_KEY", SECRET)
    for kind in ("datasets", "checkpoints", "models"):  # fresh buckets per test on the shared server
        monkeypatch.setenv(f"FIRM_{kind.upper()}_BUCKET", f"{s3_env['bucket']}-{kind[:4]}")
    return s3_env


def test_help_and_version() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for group in ("doctor", "version", "storage"):
        assert group in result.stdout
    result = invoke("version")
    assert result.exit_code == 0 and result.stdout.strip() == __version__
    result = invoke("storage", "--help")
    assert result.exit_code == 0
    for cmd in ("ls", "cp", "init", "publish", "fetch", "latest"):
        assert cmd in result.stdout


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "firmctl"
    out = subprocess.run([str(exe), "version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == __version__


@pytest.mark.parametrize(
    "args, code, needles",
    [
        (
            ["reward", "cme", "--execution", "abc", "--consistency", "3"],
            2,
            ["Invalid value for '--execution'"],
        ),
        (["reward", "cme", "--execution", "3"], 2, ["Missing option '--consistency'", "firmctl reward cme"]),
        (["critic", "parse"], 2, ["Missing option '--format'"]),
        (["nosuchcommand"], 2, ["No such command 'nosuchcommand'"]),
        (["reward", "cme", "--execution", "9", "--consistency", "3"], 1, ["--execution must be in 1..5"]),
    ],
    ids=["bad-type", "missing-option", "missing-format", "unknown-command", "firm-error"],
)
def test_console_script_usage_errors_are_one_line(args: list[str], code: int, needles: list[str]) -> None:
    """The installed script turns Typer's boxed usage errors into one `error:` line (exit 2); FIRM errors keep
    exit 1; bare groups and --help still print the help (exit 2 / 0)."""
    exe = Path(sys.executable).parent / "firmctl"
    out = subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code and out.stdout == "", out
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for needle in needles:
        assert needle in lines[0]


def test_console_script_help_still_prints() -> None:
    exe = Path(sys.executable).parent / "firmctl"
    bare = subprocess.run([str(exe), "reward"], capture_output=True, text=True, timeout=60)
    assert (
        bare.returncode == 2
        and "cme" in bare.stdout
        and "qma" in bare.stdout
        and bare.stdout.count("Usage:") == 1
    )
    helped = subprocess.run([str(exe), "reward", "cme", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--execution" in helped.stdout and helped.stderr == ""


def _lines(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    rows = {}
    for line in result.stdout.splitlines():
        status, rest = line.split(None, 1)
        assert status in ("OK", "WARN", "MISSING", "FAIL"), line
        name = "object store" if rest.startswith("object store") else rest.split()[0]
        rows[name] = status
    return rows


def test_doctor_local_store(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no helm here
    result = invoke("doctor")
    rows = _lines(result)
    assert result.exit_code == 0, result.output
    for required in ("python", "torch", "transformers", "diffusers", "tritonserver"):
        assert rows[required] == "OK"
    assert rows["helm"] == "WARN"  # optional: reported, not fatal
    assert rows["object store"] == "WARN" and "firmctl storage init" in result.stdout
    assert "device cpu" in result.stdout or "device cuda" in result.stdout
    assert invoke("storage", "init").exit_code == 0
    # a helm on PATH is found and asked for its version
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helm = bindir / "helm"
    helm.write_text("#!/bin/sh\necho v9.9.9-test\n")
    helm.chmod(helm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{Path(sys.executable).parent}")
    result = invoke("doctor")
    rows = _lines(result)
    assert result.exit_code == 0
    assert rows["helm"] == "OK" and "v9.9.9-test" in result.stdout
    assert rows["object store"] == "OK"


def test_doctor_exits_non_zero_when_a_required_component_is_missing(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A required component absent (here: no tritonserver binary where nvidia-pytriton should ship it) is
    MISSING and fails the doctor; an absent optional one (helm) alone does not."""
    from firm.cli import doctor_cmd

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no helm: WARN only
    assert invoke("storage", "init").exit_code == 0
    assert invoke("doctor").exit_code == 0
    monkeypatch.setattr(doctor_cmd, "tritonserver_path", lambda: tmp_path / "no" / "tritonserver")
    result = invoke("doctor")
    assert result.exit_code == 1
    assert _lines(result)["tritonserver"] == "MISSING" and str(tmp_path / "no") in result.stdout
    assert _lines(result)["helm"] == "WARN"


def test_doctor_s3_reachable_and_unreachable(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke("doctor")
    assert _lines(result)["object store"] == "WARN"  # reachable, buckets not created yet
    first = invoke("storage", "init")
    assert first.exit_code == 0 and first.stdout.split().count("created") == 3
    again = invoke("storage", "init")
    assert again.exit_code == 0 and again.stdout.split().count("exists") == 3
    result = invoke("doctor")
    assert _lines(result)["object store"] == "OK" and s3["FIRM_S3_ENDPOINT"] in result.stdout
    monkeypatch.setenv("FIRM_S3_ENDPOINT", f"127.0.0.1:{free_port()}")
    result = invoke("doctor")
    assert result.exit_code == 1
    assert _lines(result)["object store"] == "FAIL" and "cannot reach S3 endpoint" in result.stdout
    for res in (result, first, again):
        assert SECRET not in res.output


def test_storage_cp_ls_roundtrip_s3(s3: dict[str, str], tmp_path: Path) -> None:
    from firm.storage import S3Store

    S3Store.from_settings(s3["bucket"], get_settings()).make_bucket()
    root = f"s3://{s3['bucket']}"
    src = tmp_path / "data"
    (src / "shards").mkdir(parents=True)
    (src / "shards" / "a.jsonl").write_bytes(b'{"a": 1}\n')
    (src / "info.json").write_bytes(b"{}")
    result = invoke("storage", "cp", str(src), f"{root}/ds/")
    assert result.exit_code == 0, result.output
    assert "copied 2 file(s)" in result.stdout
    result = invoke("storage", "ls", "-r", f"{root}/ds")
    assert result.exit_code == 0
    assert result.stdout.split() == ["2", f"{root}/ds/info.json", "9", f"{root}/ds/shards/a.jsonl"]
    result = invoke("storage", "ls", f"{root}/ds/")
    assert "DIR" in result.stdout and f"{root}/ds/shards/" in result.stdout
    back = tmp_path / "back"
    result = invoke("storage", "cp", f"{root}/ds", str(back))
    assert result.exit_code == 0, result.output
    assert (back / "shards" / "a.jsonl").read_bytes() == b'{"a": 1}\n'
    assert (back / "info.json").read_bytes() == b"{}"
    # a single object into a "directory" keeps its name
    result = invoke("storage", "cp", str(src / "info.json"), f"{root}/one/")
    assert result.exit_code == 0
    assert invoke("storage", "ls", f"{root}/one/info.json").stdout.split() == ["2", f"{root}/one/info.json"]


def test_storage_publish_latest_fetch_local(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w" * 100)
    root = (tmp_path / "store").as_uri()
    for step in (1, 2):
        result = invoke("storage", "publish", str(src), f"{root}/run/step-{step}", "--producer", "cli-test")
        assert result.exit_code == 0 and "published 1 file(s)" in result.stdout
    result = invoke("storage", "latest", f"{root}/run")
    assert result.exit_code == 0 and result.stdout.strip() == f"{root}/run/step-2"
    result = invoke("storage", "fetch", f"{root}/run/step-2", str(tmp_path / "out"))
    assert result.exit_code == 0 and (tmp_path / "out" / "w.bin").read_bytes() == b"w" * 100


@pytest.mark.parametrize(
    "args, needles",
    [
        (("storage", "ls", "gs://bucket/x"), ("unknown URI scheme 'gs'", "gs://bucket/x")),
        (("storage", "ls", "s3://Bad_Bucket/x"), ("malformed S3 URI", "Bad_Bucket")),
        (("storage", "ls", "s3:///key"), ("malformed S3 URI",)),
        (("storage", "ls", "file://host/abs"), ("malformed file URI",)),
        (("storage", "cp", "/nonexistent/firm/src", "/tmp/x"), ("/nonexistent/firm/src", "no such")),
        (("storage", "latest", "/nonexistent/firm/prefix"), ("no published directory",)),
    ],
)
def test_bad_inputs_give_one_error_line(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    assert_one_error_line(invoke(*args), *needles)


def test_s3_errors_on_cli(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bucket = s3["bucket"]
    assert_one_error_line(invoke("storage", "ls", f"s3://{bucket}/x"), "no such bucket", f"s3://{bucket}/")
    from firm.storage import S3Store

    S3Store.from_settings(bucket, get_settings()).make_bucket()
    assert_one_error_line(invoke("storage", "ls", f"s3://{bucket}/missing"), "no such object or prefix")
    assert_one_error_line(
        invoke("storage", "fetch", f"s3://{bucket}/unpublished", str(tmp_path / "o")), "no MANIFEST.json"
    )
    monkeypatch.delenv("FIRM_S3_ACCESS_KEY")
    res = invoke("storage", "ls", f"s3://{bucket}/")
    assert_one_error_line(res, "missing S3 credentials", "FIRM_S3_ACCESS_KEY")
    monkeypatch.setenv("FIRM_S3_ACCESS_KEY", "x")
    monkeypatch.setenv("FIRM_S3_ENDPOINT", f"127.0.0.1:{free_port()}")
    res = invoke("storage", "cp", f"s3://{bucket}/a", str(tmp_path / "a"))
    assert_one_error_line(res, "cannot reach S3 endpoint", f"s3://{bucket}/a")
    assert SECRET not in res.output


def test_multi_line_library_messages_become_one_error_line() -> None:
    """Library messages (transformers, S3 SDK) often span lines; the CLI still prints exactly one line."""
    import typer

    from firm.cli._common import cli_errors
    from firm.errors import StorageError

    mini = typer.Typer()

    @mini.command()
    @cli_errors
    def boom() -> None:
        raise StorageError("s3://b/k: cannot reach endpoint (first line.\n\n  Second line.)")

    result = runner.invoke(mini, [])
    assert_one_error_line(result, "s3://b/k", "first line. Second line.")
