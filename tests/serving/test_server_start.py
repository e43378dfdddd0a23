"""`TritonServer` start-up: readiness is *our* server's, and a failed start names Triton's own cause.

The CLI test needs no tritonserver (the port check fails first); the last test runs the real binary on a port that
is taken after the check, so the cause has to come out of Triton's log.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firm.errors import InputError
from firm.processes import free_port
from firm.serving.server import ServerStartError, TritonServer, triton_error_line

# What tritonserver 2.51 logs on a CPU machine when its gRPC port is taken (abridged from a real log).
_SOCKET_IN_USE_LOG = """\
W1130 16:45:58.719354 17326 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory, pinned memory pool will not be available: CUDA driver version is insufficient for CUDA runtime version"
I1130 16:45:58.719439 17326 cuda_memory_manager.cc:117] "CUDA memory pool disabled"
E1130 16:45:58.719522 17326 server.cc:241] "CudaDriverHelper has not been initialized."
I1130 16:46:04.553501 17326 model_lifecycle.cc:839] "successfully loaded 'firm_edit_reward'"
E1130 16:46:04.555548752   17326 chttp2_server.cc:1060]                UNKNOWN:No address added out of total 1 resolved for '127.0.0.1:18801' {created_time:"2026-11-30T16:46:04.555470917+00:00", children:[UNKNOWN:Address already in use {syscall:"bind", os_error:"Address already in use", errno:98}]}
E1130 16:46:04.559112 17326 main.cc:245] "failed to start GRPC service: Unavailable - Socket '127.0.0.1:18801' already in use "
"""


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port held by a plain listening socket on 127.0.0.1 (not a Triton server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _fake_repository(root: Path) -> Path:
    (root / "m").mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    return root


def test_triton_error_line_prefers_socket_in_use_over_cuda_noise() -> None:
    line = triton_error_line(_SOCKET_IN_USE_LOG)
    assert line == "failed to start GRPC service: Unavailable - Socket '127.0.0.1:18801' already in use", line
    # model load failures still win over CUDA noise; CUDA noise is never the answer when anything else is there
    load_failure = (
        "E1130 16:46:04.5 17326 model_lifecycle.cc:642] \"failed to load 'firm_gen_reward' version 1\""
    )
    log = [*_SOCKET_IN_USE_LOG.splitlines()[:4], load_failure]
    assert triton_error_line("\n".join(log)).startswith("failed to load 'firm_gen_reward'")


@pytest.mark.parametrize("which", ["--grpc-port", "--http-port", "--metrics-port"])
def test_serve_start_on_port_in_use_fails_with_the_port(held_port: int, tmp_path: Path, which: str) -> None:
    from firm.cli.main import app

    ports = {p: str(free_port()) for p in ("--grpc-port", "--http-port", "--metrics-port")}
    ports[which] = str(held_port)
    r = CliRunner().invoke(
        app,
        [
            "serve",
            "start",
            "--repository",
            str(_fake_repository(tmp_path / "repo")),
            *[a for kv in ports.items() for a in kv],
        ],
    )
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stdout == ""  # no endpoints of any server
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert f"127.0.0.1:{held_port} is already in use" in r.stderr, r.stderr


class _ForeignTriton(http.server.BaseHTTPRequestHandler):
    """Answers like a ready Triton server with another id."""

    def do_GET(self) -> None:
        body = json.dumps({"name": "triton", "version": "2.51.0"}).encode() if self.path == "/v2" else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_readiness_of_another_server_is_not_ours(tmp_path: Path) -> None:
    """Another server answering "ready" on our HTTP port (it grabbed the port after our check) is not readiness."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForeignTriton)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    srv = TritonServer(tmp_path, http_port=httpd.server_address[1], startup_timeout=10)
    srv.process = subprocess.Popen(["sleep", "30"])  # our (still loading) server: alive, not answering
    try:
        with pytest.raises(ServerStartError, match="already in use by another server") as exc:
            srv._wait_ready()
        assert "'triton'" in str(exc.value)
        assert srv.process.poll() is not None  # ours was stopped
    finally:
        httpd.shutdown()
        httpd.server_close()
        if srv.process.poll() is None:
            srv.process.kill()
        srv.process.wait()
        shutil.rmtree(srv._workdir, ignore_errors=True)


def test_readiness_needs_our_process_alive(tmp_path: Path) -> None:
    """Our process exited: that is the answer, whatever answers on the HTTP port."""
    srv = TritonServer(tmp_path, startup_timeout=10)
    srv.log_path.write_text(_SOCKET_IN_USE_LOG)
    srv.process = subprocess.Popen(["sh", "-c", "exit 1"])
    srv.process.wait()
    try:
        with pytest.raises(ServerStartError, match=r"code 1: failed to start GRPC service.*already in use"):
            srv._wait_ready()
    finally:
        shutil.rmtree(srv._workdir, ignore_errors=True)


@pytest.mark.slow
def test_port_taken_after_the_check_reports_triton_cause(
    held_port: int, tmp_path: Path, tiny_critic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real tritonserver on a gRPC port taken between our check and its bind: Triton's own cause."""
    import firm.serving.server as server_mod
    from firm.serving.export import ExportConfig, export_repository

    repo = export_repository(
        ExportConfig(critic=str(tiny_critic_dir), task="edit", weights="reference"),
        tmp_path / "repo",
    )
    monkeypatch.setattr(server_mod, "port_in_use", lambda host, port: False)
    srv = TritonServer(repo, grpc_port=held_port, startup_timeout=120)
    with pytest.raises(ServerStartError) as exc:
        srv.start()
    msg = str(exc.value)
    assert f"Socket '127.0.0.1:{held_port}' already in use" in msg and "CudaDriver" not in msg, msg
    assert not srv.is_running()


def test_the_scratch_directory_goes_unless_it_holds_a_failed_servers_log(
    held_port: int, tmp_path: Path
) -> None:
    """Each `TritonServer` makes a scratch directory (the server's cwd; its log's home unless `log_path` is given).
    It must not outlive the server — one was left in /tmp per `firmctl serve start --log` — except to keep the log
    of a server that failed."""
    repo = _fake_repository(tmp_path / "repo")
    refused = TritonServer(repo, grpc_port=held_port, log_path=tmp_path / "refused.log")
    with pytest.raises(ServerStartError, match="already in use"):
        refused.start()
    assert not refused._workdir.exists()
    missing = TritonServer(tmp_path / "no-such-repository")
    with pytest.raises(InputError, match="not a directory"):
        missing.start()
    assert not missing._workdir.exists()

    for log_path, rc, kept in [(tmp_path / "own.log", 3, False), (None, 0, False), (None, 3, True)]:
        srv = TritonServer(repo, log_path=log_path)
        srv.process = subprocess.Popen(["sh", "-c", f"exit {rc}"])
        assert srv.wait() == rc
        assert srv._workdir.exists() == kept, (log_path, rc)
        shutil.rmtree(srv._workdir, ignore_errors=True)


def test_a_start_that_times_out_keeps_and_names_its_log(tmp_path: Path) -> None:
    """Not ready in time: the server is stopped, and the error gives Triton's cause from its log and where that log
    is — kept even when the stopped server exits 0 (it was removed with the scratch directory, cause and all). The
    process stands in for a tritonserver stuck loading (as in the readiness tests above)."""
    srv = TritonServer(tmp_path, startup_timeout=1)
    srv.log_path.write_text(_SOCKET_IN_USE_LOG)
    srv.process = subprocess.Popen(["sh", "-c", "sleep 30 & pid=$!; trap 'kill $pid; exit 0' TERM; wait"])
    try:
        with pytest.raises(ServerStartError, match="not ready after 1s") as exc:
            srv._wait_ready()
        assert srv.process.returncode == 0  # stopped cleanly
        msg = str(exc.value)
        assert "Socket '127.0.0.1:18801' already in use" in msg and f"(log: {srv.log_path})" in msg, msg
        assert srv.log_path.read_text() == _SOCKET_IN_USE_LOG
    finally:
        if srv.process.poll() is None:
            srv.process.kill()
        shutil.rmtree(srv._workdir, ignore_errors=True)


def test_auto_complete_is_off_only_where_every_model_declares_its_tensors(
    tmp_path: Path, tiny_critic_dir: Path
) -> None:
    """A FIRM export with the python engine declares every tensor, so Triton is not asked to auto-complete its
    configs (which costs one extra Python stub per python model load); a vLLM critic declares none and keeps it."""
    from firm.serving.export import ExportConfig, export_repository
    from firm.serving.pbtxt import declares_tensors
    from firm.serving.server import auto_complete_args

    flag = "--disable-auto-complete-config"
    python = Path(export_repository(ExportConfig(critic=str(tiny_critic_dir), task="all"), tmp_path / "py"))
    assert all(declares_tensors(p.read_text()) for p in python.glob("*/config.pbtxt"))
    assert auto_complete_args(python, []) == [flag]
    assert auto_complete_args(python, ["--log-verbose=1", flag]) == []  # the caller's own flag, passed once

    vllm = Path(
        export_repository(
            ExportConfig(critic=str(tiny_critic_dir), task="edit", engine="vllm", device="gpu"),
            tmp_path / "vllm",
        )
    )
    assert not declares_tensors((vllm / "firm_critic" / "config.pbtxt").read_text())
    assert declares_tensors((vllm / "firm_edit_reward" / "config.pbtxt").read_text())
    assert auto_complete_args(vllm, []) == []
    assert auto_complete_args(tmp_path / "empty", []) == []


_IDENTITY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
            for r in requests
        ]
"""


def test_a_config_that_lists_its_tensors_entry_by_entry_loads_without_auto_complete(tmp_path: Path) -> None:
    """Protobuf text writes a repeated field as a list or entry by entry (`input { ... }` once per tensor); a
    hand-written config often takes the second form. Both declare the tensors: the real tritonserver starts without
    auto-complete and the model serves what its config declares."""
    import urllib.request

    from firm.serving.pbtxt import declares_tensors

    model = tmp_path / "repo" / "identity"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(_IDENTITY)
    (model / "config.pbtxt").write_text(
        'name: "identity"\nbackend: "python"\nmax_batch_size: 0\n'
        'input {\n  name: "x"\n  data_type: TYPE_FP32\n  dims: [ 2 ]\n}\n'
        'output {\n  name: "y"\n  data_type: TYPE_FP32\n  dims: [ 2 ]\n}\n'
        "instance_group [ { kind: KIND_CPU, count: 1 } ]\n"
    )
    assert declares_tensors((model / "config.pbtxt").read_text())
    with TritonServer(tmp_path / "repo", startup_timeout=120) as srv:
        assert srv.process is not None
        argv = Path(f"/proc/{srv.process.pid}/cmdline").read_bytes().decode().split("\0")
        assert "--disable-auto-complete-config" in argv
        body = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -2.0]}]})
        req = urllib.request.Request(
            f"http://{srv.http_url}/v2/models/identity/infer", data=body.encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = json.loads(resp.read())
    assert out["outputs"][0]["name"] == "y" and out["outputs"][0]["data"] == [1.5, -2.0]


def test_a_callers_flag_replaces_firms_default_and_the_servers_own_flags_are_refused(tmp_path: Path) -> None:
    """FIRM's default flags (GPU metrics off, exit on error, log verbosity, the metrics interval, the auto-complete)
    yield to the same flag in `extra_args`: each flag reaches tritonserver once, with the caller's value. A flag
    TritonServer sets from its own arguments (repository, addresses, ports, id) is refused before anything is made:
    Triton would listen where TritonServer never looks for it. Both hold for a flag abbreviated as tritonserver reads
    it (any unambiguous prefix)."""
    import tempfile

    from firm.serving.server import resolve_repository

    repo = _fake_repository(tmp_path / "repo")
    (repo / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\ninput [ ]\noutput [ ]\n')
    mine = ["--exit-on-error=false", "--log-verbose=1", "--metrics-interval-ms=2000", "--allow-gpu-metrics=true",
            "--disable-auto-complete-config"]  # fmt: skip

    def command(extra: list[str]) -> list[str]:
        srv = TritonServer(repo, extra_args=extra)
        try:
            # what start() does before building the command
            srv.repository = resolve_repository(srv.repository_uri)
            return srv.command()
        finally:
            shutil.rmtree(srv._workdir, ignore_errors=True)

    argv = command(mine)
    flags = [a.split("=", 1)[0] for a in argv[1:]]
    assert sorted(flags) == sorted(set(flags)), argv
    assert set(mine) <= set(argv), argv
    # tritonserver reads an unambiguous prefix of a long option as the option (getopt_long): so does FIRM
    argv = command(["--metrics-interval=2000", "--log-verb=1"])
    assert not [a for a in argv if a.startswith(("--metrics-interval-ms", "--log-verbose"))], argv

    scratch = Path(tempfile.gettempdir())
    for extra, named in (
        (["--grpc-port=9000"], "--grpc-port"),
        (["--http-address", "0.0.0.0"], "--http-address"),
        (["--model-repository=/elsewhere", "--id=x"], "--id, --model-repository"),
        (["--model-repo=/elsewhere"], r"--model-repo \(read as --model-repository\)"),
        (["--grpc-p", "9000"], r"--grpc-p \(read as --grpc-port\)"),
    ):
        before = set(scratch.glob("firm-triton-*"))
        with pytest.raises(InputError, match=rf"^extra_args: {named}: set by TritonServer"):
            TritonServer(repo, extra_args=extra)
        assert set(scratch.glob("firm-triton-*")) == before  # no scratch directory made
