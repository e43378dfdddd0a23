"""Where the bundled Triton lives and the environment it needs to run the python backend on this interpreter.

The nvidia-pytriton wheel ships a real `tritonserver` binary, its shared libraries (`nvidia_pytriton.libs`) and the
python backend with one stub per Python version. Running it outside PyTriton takes three things, all computed here
(nothing is hard-coded):

- a backend directory `<dir>/python/` holding `libtriton_python.so`, `triton_python_backend_utils.py` and the stub
  for *this* interpreter's Python version;
- `LD_LIBRARY_PATH` with this interpreter's `LIBDIR` first (the stub links `libpython3.X.so`; a different build of
  the same version fails at model load with `_recursion_count` / `_ssl` symbol errors) and the wheel's libs;
- `PATH` with this environment's `bin` first: that is what makes the stub import this venv's packages (torch,
  transformers, firm).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from firm.errors import ConfigError


@dataclass(frozen=True)
class TritonRuntime:
    """Paths of the bundled Triton server and its python backend."""

    binary: Path
    backend_src: Path
    stub: Path
    libs: Path

    @property
    def version_key(self) -> str:
        """A short key that changes whenever the bundled backend files change (names the backend cache)."""
        h = hashlib.sha256()
        for p in (self.backend_src / "libtriton_python.so", self.stub):
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{int(st.st_mtime)}".encode())
        return h.hexdigest()[:12]


def find_runtime() -> TritonRuntime:
    """Locate tritonserver, the python backend and the stub for this Python inside the nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ConfigError("nvidia-pytriton is not installed; it provides the tritonserver binary") from exc
    pkg = Path(pytriton.__file__).resolve().parent
    root = pkg / "tritonserver"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    rt = TritonRuntime(
        binary=root / "bin" / "tritonserver",
        backend_src=root / "backends" / "python",
        stub=root / "python_backend_stubs" / py / "triton_python_backend_stub",
        libs=pkg.parent / "nvidia_pytriton.libs",
    )
    for what, path in (
        ("tritonserver binary", rt.binary),
        ("python backend", rt.backend_src),
        (f"python {py} backend stub", rt.stub),
    ):
        if not path.exists():
            raise ConfigError(f"{what} not found at {path} (nvidia-pytriton wheel incomplete?)")
    return rt


def backend_dir(rt: TritonRuntime, cache_root: Path) -> Path:
    """A backend directory (`<dir>/python/{libtriton_python.so, utils, stub}`), assembled once and reused.

    Built in a temporary folder and renamed into place, so concurrent servers never see a half-copied backend.
    """
    target = cache_root / f"backends-{rt.version_key}"
    if (target / "python" / "triton_python_backend_stub").exists():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=cache_root))
    py = tmp / "python"
    py.mkdir()
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(rt.backend_src / name, py / name)
    shutil.copy2(rt.stub, py / "triton_python_backend_stub")
    try:
        os.rename(tmp, target)
    except OSError:  # another process won the race: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def server_env(rt: TritonRuntime, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `tritonserver`: venv bin first on PATH, LIBDIR and the wheel's libs on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, *[p for p in env.get("PATH", "").split(os.pathsep) if p]])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = [p for p in (libdir, str(rt.libs), *env.get("LD_LIBRARY_PATH", "").split(os.pathsep)) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(ld))
    env.pop("PYTHONPATH", None)  # the stub must use the venv found through PATH, not a foreign path
    # Quiet, deterministic model loading inside the stubs.
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Asks for no __pycache__ in a model's version directory (in model-control mode EXPLICIT Triton takes a changed
    # directory for a modified model and reloads it whenever a model depending on it is loaded). The python stub's
    # embedded interpreter ignores it (measured): firm.launch.rollout writes model.py's bytecode up front instead.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env
