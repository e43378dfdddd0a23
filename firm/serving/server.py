"""Run the real `tritonserver` binary (bundled in nvidia-pytriton) on a FIRM model repository.

`TritonServer` is a context manager used by `firmctl serve start`, the tests, the benchmarks and the RL trainer:

    with TritonServer("/path/or/s3://bucket/repo") as srv:
        client = RewardClient([srv.grpc_url])

It binds 127.0.0.1 by default, picks free ports when none are given, waits for readiness, and raises
`ServerStartError` carrying Triton's own error line when a model fails to load. Repositories on s3:// (or file://)
are fetched and verified against their manifest into the local cache first (`firm.storage.resolve_local`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

from firm.errors import FirmError, InputError
from firm.processes import descendants, free_port
from firm.serving.pbtxt import declares_tensors
from firm.serving.runtime import backend_dir, find_runtime, server_env


class ServerStartError(FirmError):
    """tritonserver exited or never became ready; the message carries Triton's own error line."""


def port_in_use(host: str, port: int) -> bool:
    """Whether something is bound to (or listening on) `host:port` — a server we would start there could not bind.
    SO_REUSEADDR makes sockets left in TIME_WAIT by a previous run count as free, as they do for tritonserver."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


_LOG_PREFIX = re.compile(r"^[EIW]\d{4} [\d:.]+ +\d+ \S+\] ")


def _clean(line: str) -> str:
    line = _LOG_PREFIX.sub("", line).strip().strip('"')
    return line.split("\\n")[0].strip()  # Triton escapes newlines; keep the first line of a traceback message


# Lines that say why tritonserver stopped, most telling first. A CPU-only machine always logs CUDA/NVML/GPU errors
# ("CudaDriverHelper has not been initialized.") that are harmless, so they never win over a real cause.
_CAUSES = (
    re.compile(
        r"already in use", re.I
    ),  # "failed to start GRPC service: Unavailable - Socket '...' already in use"
    re.compile(r"failed to start \S+ service", re.I),
    re.compile(r"failed to load"),
)
_HARMLESS = re.compile(r"cuda|nvml|gpu|pinned memory", re.I)


def triton_error_line(log: str) -> str:
    """The most telling error line from a tritonserver log: a port already in use or a service that failed to
    start, then model load failures, then the first error that is not generic CUDA/GPU noise."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for pattern in _CAUSES:
        for ln in lines:
            # gRPC core's own lines ("UNKNOWN:No address added ... {created_time: ...}") repeat it less readably
            if pattern.search(ln) and re.match(r"^[EW]\d{4} ", ln) and "{created_time:" not in ln:
                return _clean(ln)
    for ln in lines:
        if "failed to load" in ln:
            return _clean(ln)
    for ln in lines:
        if re.match(r"^E\d{4} ", ln) and not _HARMLESS.search(ln) and "{created_time:" not in ln:
            return _clean(ln)
    for ln in reversed(lines):
        if "error" in ln.lower():
            return _clean(ln)
    return lines[-1] if lines else "tritonserver produced no output"


def resolve_repository(repository: str | Path) -> Path:
    """A local model repository directory; file:// and s3:// repositories are fetched (manifest-verified)."""
    text = str(repository)
    if "://" in text:
        from firm.storage import resolve_local

        path = Path(resolve_local(text))
    else:
        path = Path(text).expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"model repository {text}: not a directory")
    if not any((p / "config.pbtxt").exists() for p in path.iterdir() if p.is_dir()):
        raise InputError(f"model repository {text}: no <model>/config.pbtxt inside")
    return path


# Triton's metrics thread sleeps a whole interval (default 2000 ms) before the server may exit: at 500 ms a stop
# takes ~0.75 s less (measured: 2.9 s → 2.2 s for a tiny critic), and the CPU metrics are a little fresher.
METRICS_INTERVAL_ARG = "--metrics-interval-ms=500"


# Flags TritonServer derives from its own arguments and relies on: where it polls for readiness (addresses, ports),
# which server is ours (`--id`), which configs decide the auto-complete (the repository) and where the backends are.
OWN_FLAGS = frozenset(
    {"--model-repository", "--backend-directory", "--id"}
    | {f"--{kind}-{what}" for kind in ("http", "grpc", "metrics") for what in ("address", "port")}
)


def _flag(arg: str) -> str:
    return arg.split("=", 1)[0]


def _names(given: str, flag: str) -> bool:
    """Whether tritonserver reads the option `given` as `flag`: itself, or a prefix of it (getopt_long takes any
    unambiguous prefix of a long option, `--model-repo=…` for `--model-repository=…`; measured with the bundled
    tritonserver)."""
    return given == flag or (len(given) > 2 and given.startswith("--") and flag.startswith(given))


def _unless_given(args: list[str], extra_args: list[str]) -> list[str]:
    """`args` (FIRM's defaults) less those whose flag the caller's `extra_args` set, abbreviated or not: every flag
    is passed once, and the caller's value is the one Triton gets."""
    given = {_flag(a) for a in extra_args}
    return [a for a in args if not any(_names(g, _flag(a)) for g in given)]


def check_extra_args(extra_args: list[str]) -> None:
    """Refuse extra tritonserver arguments that set a flag TritonServer sets from its own arguments (`OWN_FLAGS`),
    abbreviated or not: a port given there would make Triton listen where TritonServer never looks, and its start
    would time out."""
    taken = []
    for given in sorted({_flag(a) for a in extra_args}):
        meant = sorted(f for f in OWN_FLAGS if _names(given, f))
        if meant:
            taken.append(given if meant == [given] else f"{given} (read as {' or '.join(meant)})")
    if taken:
        raise InputError(
            f"extra_args: {', '.join(taken)}: set by TritonServer from its own arguments (the repository, host=, "
            "grpc_port=, http_port=, metrics_port=); pass the value there"
        )


def auto_complete_args(repository: Path, extra_args: list[str]) -> list[str]:
    """`--disable-auto-complete-config` when every model of `repository` declares its tensors (a FIRM export with
    the python engine) and `extra_args` do not set it already. Triton otherwise starts one extra Python stub per
    python model only to ask it for a config it already has: ~1 s more for every load, a rollout's included. A
    vLLM-backend critic needs the auto-complete (its backend declares its tensors), and so would a model added
    later to a live repository that does not declare its own."""
    configs = list(repository.glob("*/config.pbtxt"))
    if configs and all(declares_tensors(p.read_text()) for p in configs):
        return _unless_given(["--disable-auto-complete-config"], extra_args)
    return []


class TritonServer:
    """A tritonserver process serving `repository` on loopback ports (free ones unless given)."""

    def __init__(
        self,
        repository: str | Path,
        *,
        host: str = "127.0.0.1",
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        startup_timeout: float = 180.0,
        log_path: str | Path | None = None,
        log_verbose: int = 0,
        extra_args: list[str] | None = None,
    ) -> None:
        self.extra_args = list(extra_args or [])
        check_extra_args(self.extra_args)
        self.repository_uri = str(repository)
        self.host = host
        self.grpc_port = grpc_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.startup_timeout = startup_timeout
        self.log_verbose = log_verbose
        self._workdir = Path(tempfile.mkdtemp(prefix="firm-triton-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.repository: Path | None = None
        # Our server's id (`--id`, reported by GET /v2): readiness is only ever taken from this server, never from
        # another one that happens to answer on the same HTTP port.
        self.server_id = f"firm-{uuid.uuid4().hex[:12]}"

    # -- endpoints ---------------------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def endpoints(self) -> dict[str, str]:
        return {"grpc": self.grpc_url, "http": f"http://{self.http_url}", "metrics": self.metrics_url}

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        rt = find_runtime()
        from firm.config import get_settings

        backends = backend_dir(rt, get_settings().home / "triton")
        assert self.repository is not None
        return [
            str(rt.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--id={self.server_id}",
            *_unless_given(
                [
                    "--allow-gpu-metrics=false",
                    "--exit-on-error=true",
                    f"--log-verbose={self.log_verbose}",
                    METRICS_INTERVAL_ARG,
                ],
                self.extra_args,
            ),
            *auto_complete_args(self.repository, self.extra_args),
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        """Start tritonserver and block until every model is ready (or raise `ServerStartError`)."""
        try:
            self._launch()
        except BaseException:
            if self.process is None:  # nothing ran: no log to keep (a missing repository, a port taken, ...)
                self._drop_workdir()
            raise
        self._wait_ready()
        return self

    def _launch(self) -> None:
        self._check_ports()  # before fetching the repository: fail fast, leave nothing behind
        self.repository = resolve_repository(self.repository_uri)
        cmd = self.command()
        self._check_ports()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            # A neutral cwd: the python-backend stub puts its cwd first on sys.path.
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                env=server_env(find_runtime()),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def _check_ports(self) -> None:
        """Refuse to start on a port that is taken (another tritonserver, a stale `firmctl serve start`, anything):
        tritonserver would load every model first and only then fail to bind, and meanwhile the other server's
        readiness could be mistaken for ours."""
        named = {"gRPC": self.grpc_port, "HTTP": self.http_port, "metrics": self.metrics_port}
        if len(set(named.values())) < len(named):
            raise ServerStartError(f"the gRPC, HTTP and metrics ports must differ, got {named}")
        for name, port in named.items():
            if port_in_use(self.host, port):
                raise ServerStartError(
                    f"{name} port {self.host}:{port} is already in use (another tritonserver?): stop what holds "
                    "it or choose another port (0 picks a free one)"
                )

    def _drop_workdir(self, keep_log: bool = False) -> None:
        """Remove the scratch directory (the server's neutral cwd, and its log's home unless `log_path` was given)
        once no server runs from it — unless `keep_log` (a server that failed) and the log is in it. A given
        `log_path` lives elsewhere, so its server's scratch directory is always removed."""
        if not (keep_log and self.log_path.parent == self._workdir):
            shutil.rmtree(self._workdir, ignore_errors=True)

    def _start_failed(self, reason: str) -> ServerStartError:
        """The error of a start that failed (the server has exited): Triton's own cause, read from its log, which is
        kept and named."""
        error = ServerStartError(f"{reason}: {triton_error_line(self.read_log())} (log: {self.log_path})")
        self._drop_workdir(keep_log=True)
        return error

    def _get(self, path: str) -> tuple[int, bytes] | None:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=1.0) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), b""
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
            return None

    def _wait_ready(self) -> None:
        """Ready means: *our* process is alive, the server answering on our HTTP port reports our `--id`, and it
        says every model is ready."""
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            rc = self.process.poll()
            if rc is not None:
                raise self._start_failed(f"tritonserver exited with code {rc}")
            ready = self._get("/v2/health/ready")
            if ready is not None and ready[0] == 200:
                meta = self._get("/v2")
                name = None
                if meta is not None and meta[0] == 200:
                    try:
                        name = json.loads(meta[1]).get("name")
                    except (ValueError, AttributeError):
                        name = None
                rc = self.process.poll()
                if rc is not None:
                    raise self._start_failed(f"tritonserver exited with code {rc}")
                if name == self.server_id:
                    return
                if (
                    name is None
                ):  # no usable answer yet: ask again (behind a foreign non-Triton server ours exits)
                    time.sleep(0.1)
                    continue
                self.stop()
                raise ServerStartError(
                    f"HTTP port {self.http_url} is already in use by another server"
                    f"{f' (id {name!r})' if name else ''}: stop it or choose another port (0 picks a free one)"
                )
            time.sleep(0.1)
        self._terminate()
        raise self._start_failed(f"tritonserver not ready after {self.startup_timeout:.0f}s")

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def memory(self) -> dict[str, int]:
        """Resident memory of the server and its python-backend stubs (`firm.processes.tree_memory`)."""
        from firm.processes import tree_memory

        return tree_memory(self.process.pid) if self.is_running() and self.process else {"rss": 0, "pss": 0}

    def send_signal(self, sig: int) -> None:
        if self.is_running():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait for a clean shutdown (Triton drains in-flight requests), SIGKILL the group if it hangs; the
        scratch directory goes (with the log in it, unless the server failed)."""
        rc = self._terminate(timeout)
        if rc is not None:
            self._drop_workdir(keep_log=rc != 0)
        return rc

    def _terminate(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def wait(self) -> int:
        """Block until the server exits; its exit code (the scratch directory goes as in `stop`)."""
        assert self.process is not None
        rc = self.process.wait()
        self._drop_workdir(keep_log=rc != 0)
        return rc

    def rss_bytes(self) -> int:
        """Resident memory of tritonserver plus its backend stub processes (Linux /proc)."""
        if not self.is_running():
            return 0
        assert self.process is not None
        pids = [self.process.pid, *descendants(self.process.pid)]
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the process (thread) that started tritonserver dies, so a killed
    trainer or test run never leaves a server behind (Linux prctl PR_SET_PDEATHSIG; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
