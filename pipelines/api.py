"""What `firmctl pipeline` does, as functions: list, validate parameters, compile, run locally, submit, upload.

Parameters are given as `key=value` strings and checked against the pipeline's declared inputs before anything
compiles or is submitted: an unknown name, a value that is not of the declared type (int, float, bool, list, str),
a `*_recipe` that is neither a shipped recipe nor a file/URI, or `dataset_source=curate-edit|curate-gen` without
the `curation_*` parameters it needs is one `ConfigError` naming the parameter.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from firm.errors import ConfigError, FirmError

COMPILED_DIR = Path(__file__).parent / "compiled"
NAMES = ("firm", "critic", "rl", "bench")


class PipelineError(FirmError):
    """A pipeline could not be compiled, run or submitted."""


class PipelineInfo(BaseModel):
    name: str
    description: str
    parameters: dict[str, dict[str, Any]]


def _registry() -> dict[str, Any]:
    from pipelines import dags

    return {
        "firm": dags.firm_pipeline,
        "critic": dags.critic_pipeline,
        "rl": dags.rl_pipeline,
        "bench": dags.bench_pipeline,
    }


def get_pipeline(name: str) -> Any:
    reg = _registry()
    if name not in reg:
        raise ConfigError(f"no pipeline named {name!r}; shipped pipelines: {', '.join(NAMES)}")
    return reg[name]


_TYPES = {
    "String": "str",
    "Integer": "int",
    "Float": "float",
    "Boolean": "bool",
    "List": "list",
    "Dict": "dict",
}


def _inputs(pipeline: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for name, spec in pipeline.component_spec.inputs.items():
        out[name] = {"type": _TYPES.get(str(spec.type), str(spec.type).lower()), "default": spec.default}
    return out


def list_pipelines() -> list[PipelineInfo]:
    return [
        PipelineInfo(name=n, description=p.description or "", parameters=_inputs(p))
        for n, p in _registry().items()
    ]


def _convert(name: str, kind: str, raw: str) -> Any:
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return low in ("true", "1", "yes")
        if kind in ("list", "dict"):
            value = yaml.safe_load(raw)
            if not isinstance(value, list if kind == "list" else dict):
                raise ValueError(raw)
            return value
        return raw
    except (ValueError, yaml.YAMLError):
        raise ConfigError(f"pipeline parameter {name!r}: {raw!r} is not of type {kind}") from None


def validate_params(pipeline_name: str, params: list[str]) -> dict[str, Any]:
    """`key=value` strings → typed arguments of the pipeline (see the module docstring)."""
    pipeline = get_pipeline(pipeline_name)
    declared = _inputs(pipeline)
    out: dict[str, Any] = {}
    for item in params:
        if "=" not in item:
            raise ConfigError(f"pipeline parameter {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in declared:
            raise ConfigError(
                f"pipeline {pipeline_name} has no parameter {key!r} (parameters: {', '.join(sorted(declared))})"
            )
        out[key] = _convert(key, declared[key]["type"], raw)
    _check_curation(declared, out)
    for key in declared:
        if key.endswith("_recipe"):
            value = out.get(key, declared[key]["default"])
            if value and "://" not in str(value) and not Path(str(value)).is_file():
                from firm.recipes import recipe_path

                try:
                    recipe_path(str(value))
                except ConfigError as exc:
                    raise ConfigError(f"pipeline parameter {key!r}: {exc}") from None
    return out


def _check_curation(declared: dict[str, dict[str, Any]], args: dict[str, Any]) -> None:
    """With `dataset_source=curate-edit|curate-gen`, the `curation_*` parameters must describe a curation run."""
    from firm.curation.prepare import CURATE, PARAM_PREFIX, check_curation
    from firm.errors import InputError

    source = args.get("dataset_source", declared.get("dataset_source", {}).get("default"))
    if source not in CURATE:
        return
    values = {
        k.removeprefix(PARAM_PREFIX): args.get(k, d["default"])
        for k, d in declared.items()
        if k.startswith(PARAM_PREFIX)
    }
    try:
        check_curation(CURATE[source], values)
    except InputError as exc:
        raise ConfigError(f"pipeline parameter {exc}") from None


def compile_pipeline(name: str, out_dir: str | Path) -> Path:
    from kfp import compiler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    compiler.Compiler().compile(get_pipeline(name), str(path))
    return path


def compile_all(out_dir: str | Path = COMPILED_DIR) -> list[Path]:
    """Compile every pipeline to `<out_dir>/<name>.yaml` (KFP IR YAML, uploadable in the KFP UI)."""
    return [compile_pipeline(n, out_dir) for n in NAMES]


class LocalRun(BaseModel):
    pipeline: str
    run_dir: Path
    seconds: float
    arguments: dict[str, Any]


def run_local(name: str, params: list[str], *, pipeline_root: str | Path | None = None) -> LocalRun:
    """Run the very same pipeline function with the KFP local runner (subprocesses in this environment), with
    `backend=local`: torchrun jobs on this machine, the local object store, the bundled tritonserver."""
    from kfp import local

    from firm.config import get_settings

    args = validate_params(name, params)
    if "backend" in _inputs(get_pipeline(name)):
        if args.get("backend", "local") != "local":
            raise ConfigError("pipeline parameter 'backend': a local run uses backend=local")
        args["backend"] = "local"
    root = Path(pipeline_root or get_settings().home / "pipeline-runs").resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    t0 = time.perf_counter()
    try:
        get_pipeline(name)(**args)
    except RuntimeError as exc:
        raise PipelineError(" ".join(str(exc).split())) from None
    finally:
        seconds = time.perf_counter() - t0
    new = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    return LocalRun(pipeline=name, run_dir=new[-1] if new else root, seconds=seconds, arguments=args)


def _client(host: str) -> Any:
    import warnings

    import kfp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kfp's "only works with KFP v2" FutureWarning on every client
            client = kfp.Client(host=host)
        client.list_experiments(page_size=1)  # reach the API before anything is uploaded
    except Exception as exc:
        raise PipelineError(
            f"cannot reach Kubeflow Pipelines at {host}: {' '.join(str(exc).split())[:200]}"
        ) from None
    return client


def _upload(client: Any, name: str, path: Path) -> tuple[str, str]:
    """(pipeline id, version id): the pipeline `firm-<name>` created or reused, a version named by content hash."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    display = "firm" if name == "firm" else f"firm-{name}"
    pid = client.get_pipeline_id(display)
    if pid is None:
        p = client.upload_pipeline(str(path), pipeline_name=display)
        pid = p.pipeline_id
    versions = client.list_pipeline_versions(pid, page_size=200).pipeline_versions or []
    for v in versions:
        if v.display_name == digest:
            return pid, v.pipeline_version_id
    v = client.upload_pipeline_version(str(path), pipeline_version_name=digest, pipeline_id=pid)
    return pid, v.pipeline_version_id


def upload_all(host: str, compiled_dir: str | Path = COMPILED_DIR) -> dict[str, tuple[str, str]]:
    client = _client(host)
    return {n: _upload(client, n, Path(compiled_dir) / f"{n}.yaml") for n in NAMES}


def submit(
    name: str, params: list[str], *, host: str, experiment: str = "firm", service_account: str | None = None
) -> str:
    """Upload (or reuse) the pipeline version and start a run; returns the run's URL in the KFP UI."""
    import tempfile

    from firm.config import get_settings

    args = validate_params(name, params)
    client = _client(host)
    with tempfile.TemporaryDirectory() as tmp:
        path = compile_pipeline(name, tmp)
        pid, vid = _upload(client, name, path)
    exp = client.create_experiment(experiment)
    run = client.run_pipeline(
        experiment_id=exp.experiment_id,
        job_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        params=args,
        pipeline_id=pid,
        version_id=vid,
        service_account=service_account or get_settings().cluster.pipeline_service_account,
    )
    return f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
