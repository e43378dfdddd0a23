"""What `firmctl pipeline` does, as functions: list, validate parameters, compile, run locally, submit, upload.

Parameters are given as `key=value` strings and checked against the pipeline's declared inputs before anything
compiles or is submitted: an unknown name, a value that is not of the declared type (int, float, bool, list, str),
a `*_recipe` that is neither a shipped recipe nor a file/URI, or `dataset_source=curate-edit|curate-gen` without
the `curation_*` parameters it needs is one `ConfigError` naming the parameter.

On a cluster: the client sends a bearer token when it has one (`KFP_TOKEN`, else the projected ServiceAccount token
at `KF_PIPELINES_SA_TOKEN_PATH`, default /var/run/secrets/kubeflow/pipelines/token) and, when the KFP API reports
multi-user mode, names the profile namespace of experiments and runs. Uploads compile the pipelines from the current
settings (images, node pools, Secret and ServiceAccount names: what the Helm chart's settings ConfigMap holds) and
refuse a KFP older than `MIN_KFP_VERSION` when the endpoint reports its version.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from rich.console import Console

from firm.errors import ConfigError, FirmError
from firm.launch.kfp_run import MIN_KFP_VERSION
from pipelines.local_view import StageResult

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
    stages: list[StageResult] = []
    logs: Path | None = None


class LocalRunFailed(PipelineError):
    """A local run failed; `run` holds what ran (its stages, their logs)."""

    def __init__(self, message: str, run: LocalRun) -> None:
        super().__init__(message)
        self.run = run


# Two warnings of the local runner that a local run cannot act on, each filtered by its exact text (any other
# warning still reaches the run's log):
# - every task whose image name lacks "python": FIRM's steps name the pipeline image a cluster runs, and the local
#   runner runs them in this Python environment whatever their image is (that is what a local run is); its text is
#   public (`IMAGE_WARNING`) for code that runs FIRM's steps on the local runner without `run_local`;
# - every task with a display name (the name the KFP UI shows on a cluster) or a GPU (a step placed on the GPU pool):
#   the pipeline's IR is built once, when `pipelines.dags` is imported, and the same IR runs locally and on a
#   cluster. Other settings the local runner ignores (CPU or memory limits) still warn.
IMAGE_WARNING = "You may be attemping to run a task that uses custom or non-Python base image"
_NOOP = r"'(?:display_name|accelerator)'"
_NOOP_WARNING = (
    rf"Task '[^']+': settings \[{_NOOP}(?:, {_NOOP})*\] have no effect in the current local runner"
)


def run_local(
    name: str,
    params: list[str],
    *,
    pipeline_root: str | Path | None = None,
    console: Console | None = None,
    verbose: bool = False,
) -> LocalRun:
    """Run the very same pipeline function with the KFP local runner (subprocesses in this environment), with
    `backend=local`: torchrun jobs on this machine, the local object store, the bundled tritonserver.

    The runner's output goes to one log per stage under the run's folder (`pipelines.local_view`); `console` (default:
    stderr) gets one line per stage, and on failure the failing stage's last lines and its log's path before
    `LocalRunFailed` is raised. `verbose=True` also shows everything the runner printed."""
    import contextlib
    import sys
    import warnings

    from kfp import local

    from firm.config import get_settings
    from pipelines.local_view import StageLogs

    args = validate_params(name, params)
    if "backend" in _inputs(get_pipeline(name)):
        if args.get("backend", "local") != "local":
            raise ConfigError("pipeline parameter 'backend': a local run uses backend=local")
        args["backend"] = "local"
    root = Path(pipeline_root or get_settings().home / "pipeline-runs").resolve()
    root.mkdir(parents=True, exist_ok=True)
    con = console or Console(file=sys.stderr)
    stage_names = _stage_names(get_pipeline(name))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    t0 = time.perf_counter()
    logs = StageLogs(root, con, names=stage_names, verbose=verbose, echo=sys.__stderr__)
    error: str | None = None
    with logs, contextlib.redirect_stdout(logs), contextlib.redirect_stderr(logs), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=IMAGE_WARNING, category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=_NOOP_WARNING, category=UserWarning)
        try:
            get_pipeline(name)(**args)
        except RuntimeError as exc:
            error = " ".join(str(exc).split())
    run = LocalRun(
        pipeline=name, run_dir=logs.run_dir or root, seconds=time.perf_counter() - t0, arguments=args,
        stages=list(logs.stages.values()), logs=logs.log_path(None),
    )  # fmt: skip
    if error is not None:
        logs.report_failure()
        stage, cause = logs.failed_stage(), logs.failure_cause()
        if stage is not None:
            error = f"pipeline {name}: step {stage.name!r} ({stage.task}) failed" + (
                f": {cause}" if cause else ""
            )
        raise LocalRunFailed(error, run)
    return run


def _stage_names(pipeline: Any) -> dict[str, str]:
    """KFP task name → the step's display name in the pipeline's IR (what the KFP UI shows on a cluster)."""
    spec = pipeline.pipeline_spec
    out: dict[str, str] = {}
    for dag in [spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))]:
        for task_name, task in dag.tasks.items():
            out[task_name] = task.task_info.name or task_name
    return out


SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # kfp's KF_PIPELINES_SA_TOKEN_PATH default


def kfp_token() -> str | None:
    """The bearer token for the KFP API: `KFP_TOKEN`, else the projected ServiceAccount token file (in a pod)."""
    if token := os.environ.get("KFP_TOKEN", "").strip():
        return token
    path = Path(os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", SA_TOKEN_PATH))
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class KfpServer(BaseModel):
    multi_user: bool = False
    version: str | None = None


def server_info(host: str, token: str | None = None) -> KfpServer:
    """Healthz of the KFP endpoint: multi-user mode and, where it says, the KFP release. The API server's v2beta1
    healthz only has `multi_user` (and `pipeline_store`; kubeflow/pipelines backend/api/v2beta1/healthz.proto); the
    KFP UI in front of it (the usual endpoint, e.g. Kubeflow's `/pipeline`) adds its release as `frontendTagName`
    (frontend/server/handlers/healthz.ts); releases before 2.0 answered `tag_name`."""
    import urllib.request

    req = urllib.request.Request(f"{host.rstrip('/')}/apis/v2beta1/healthz")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read() or b"{}")
    except Exception as exc:
        raise PipelineError(
            f"cannot reach Kubeflow Pipelines at {host}: {' '.join(str(exc).split())[:200]}"
        ) from None
    version = body.get("frontendTagName") or body.get("apiServerTagName") or body.get("tag_name") or None
    return KfpServer(multi_user=bool(body.get("multi_user")), version=version)


def _older(version: str, minimum: str) -> bool | None:
    import re

    def parse(v: str) -> tuple[int, ...] | None:
        m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", v.strip())
        return tuple(int(x or 0) for x in m.groups()) if m else None

    have, need = parse(version), parse(minimum)
    return None if have is None or need is None else have < need


def check_version(host: str, version: str | None, console: Console | None = None) -> None:
    """Refuse a KFP older than `MIN_KFP_VERSION` (one line); say so on stderr when its version is unknown."""
    if version and _older(version, MIN_KFP_VERSION):
        raise PipelineError(
            f"Kubeflow Pipelines {version} at {host} is older than {MIN_KFP_VERSION}, the oldest KFP backend that "
            f"runs FIRM's compiled pipelines; upgrade Kubeflow Pipelines"
        )
    if not version:
        (console or Console(stderr=True)).print(
            f"note: {host} does not report its KFP version; FIRM's pipelines need Kubeflow Pipelines >= "
            f"{MIN_KFP_VERSION} (state it with --kfp-version to check)",
            highlight=False,
        )


class KfpSession(BaseModel):
    model_config = {"arbitrary_types_allowed": True}

    client: Any
    namespace: str | None = None  # the profile namespace in multi-user mode, else None
    server: KfpServer


def _client(host: str, namespace: str | None = None, kfp_version: str | None = None) -> KfpSession:
    import warnings

    import kfp

    from firm.config import get_settings

    token = kfp_token()
    server = server_info(host, token)
    if kfp_version:
        server.version = kfp_version
    check_version(host, server.version)
    ns = (namespace or get_settings().namespace) if server.multi_user else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kfp's "only works with KFP v2" FutureWarning on every client
            client = kfp.Client(host=host, existing_token=token, namespace=ns or "kubeflow")
        client.list_experiments(page_size=1, namespace=ns)  # reach the API before anything is uploaded
    except Exception as exc:
        raise PipelineError(
            f"cannot reach Kubeflow Pipelines at {host}: {' '.join(str(exc).split())[:200]}"
        ) from None
    return KfpSession(client=client, namespace=ns, server=server)


def _upload(client: Any, name: str, path: Path, label: str | None = None) -> tuple[str, str]:
    """(pipeline id, version id): the pipeline `firm-<name>` created or reused, a version named by content hash
    (prefixed by `label`, e.g. the chart version and values hash, so an upgrade makes a new version)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    digest = f"{label}-{digest}" if label else digest
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


def upload_all(
    host: str,
    compiled_dir: str | Path | None = None,
    *,
    label: str | None = None,
    namespace: str | None = None,
    kfp_version: str | None = None,
) -> dict[str, tuple[str, str]]:
    """Upload every pipeline: compiled now from the current settings (what the cluster's settings ConfigMap says:
    images, pools, Secret and ServiceAccount names), or the files in `compiled_dir`."""
    import tempfile

    session = _client(host, namespace, kfp_version)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(compiled_dir) if compiled_dir is not None else Path(tmp)
        if compiled_dir is None:
            compile_all(src)
        return {n: _upload(session.client, n, src / f"{n}.yaml", label) for n in NAMES}


def submit(
    name: str,
    params: list[str],
    *,
    host: str,
    experiment: str = "firm",
    service_account: str | None = None,
    namespace: str | None = None,
    kfp_version: str | None = None,
) -> str:
    """Upload (or reuse) the pipeline version and start a run; returns the run's URL in the KFP UI."""
    import tempfile

    from firm.config import get_settings

    args = validate_params(name, params)
    session = _client(host, namespace, kfp_version)
    client = session.client
    with tempfile.TemporaryDirectory() as tmp:
        path = compile_pipeline(name, tmp)
        pid, vid = _upload(client, name, path)
    exp = client.create_experiment(experiment, namespace=session.namespace)
    run = client.run_pipeline(
        experiment_id=exp.experiment_id,
        job_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        params=args,
        pipeline_id=pid,
        version_id=vid,
        service_account=service_account or get_settings().cluster.pipeline_service_account,
    )
    return f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
