"""Export a FIRM critic as a Triton model repository (local directory, or published atomically to s3:// / file://).

Layout (python engine, the default)::

    <repo>/firm_engine/config.pbtxt          python backend: the one model that holds the critic (dynamic batching)
    <repo>/firm_engine/1/model.py            imports firm.serving.backend.engine
    <repo>/firm_engine/1/critic/             the critic's weights + processor (weights="copy")
    <repo>/firm_engine/1/rubrics.yaml        the rubric pack the critic is asked with (a server is self-contained)
    <repo>/firm_critic/config.pbtxt          ensemble → firm_engine: one judgement per row (images + rubric id + text)
    <repo>/firm_edit_reward/config.pbtxt     ensemble → firm_engine: CME/… reward, both axes in one critic call
    <repo>/firm_gen_reward/config.pbtxt      ensemble → firm_engine: QMA reward, instruction + quality

One copy of the weights per server: the three public models are one-step ensembles (no process, no queue of their
own) over `firm_engine`, whose dynamic batcher merges requests of all three into one critic call
(`firm.serving.backend.engine`). Every model's config parameters name the pack (`rubrics_name`,
`rubrics_sha256`), so clients and bench reports can say which prompts produced a score. Answer budgets and pixel
bounds come from the pack per (task, axis) unless `max_new_tokens` / `max_pixels` override them.

With `engine="vllm"` the critic becomes a Triton vLLM-backend model (`firm_critic/1/model.json` holds the engine
args, continuous batching on GPUs, `max_batch_size: 0` as that backend requires) and the reward models stay python
models that call it through BLS. That variant needs the NGC `tritonserver:<xx.yy>-vllm-python-py3` image.

The repository's model.py files are two-line shims: the code lives in `firm.serving.backend`, so the server's Python
environment must have `firm` installed (true for `firmctl serve start` and the FIRM serving image).

Running the vLLM variant (GPU host, NVIDIA's Triton vLLM container; not runnable on the CPU CI, where its files are
checked structurally by tests/serving/test_export.py)::

    firmctl serve export --critic s3://firm-models/critics/firm-edit-8b --task all --engine vllm --device gpu \
        --out runs/triton-vllm                      # weights copied in; model.json points at /models/...
    docker run --rm --gpus all --shm-size=16g \
        -p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 -p 127.0.0.1:8002:8002 \
        -v "$PWD/runs/triton-vllm:/models" -v "$PWD:/src/firm:ro" \
        nvcr.io/nvidia/tritonserver:<yy.mm>-vllm-python-py3 \
        bash -c 'pip install --no-deps /src/firm && tritonserver --model-repository=/models'
    firmctl serve score --endpoint 127.0.0.1:8001 --task edit --source a.png --edited b.png --instruction "..."

- Mount the repository at `vllm_models_root` (default `/models`): model.json holds the critic's absolute path there.
- `pip install --no-deps` keeps the image's own torch/vLLM/transformers; the reward models only need firm itself plus
  pydantic, numpy, Pillow and transformers, which the image already has (add `minio` for an s3:// critic reference).
- `firm_critic` is the stock vLLM backend (decoupled, `max_batch_size: 0`, continuous batching inside the engine);
  `firm_edit_reward` / `firm_gen_reward` keep the same tensors as the python engine and call it through BLS, so
  `RewardClient` and the RL trainer need no change. Extra engine args: `ExportConfig.vllm_engine_args` (e.g.
  `tensor_parallel_size`); `disable_log_requests` in the defaults may need removing on vLLM releases that dropped it.
- Image sizing: the reward models fit every image with the critic's pixel rule before sending it
  (`firm.serving.backend.vllm_critic.render_request`, the in-process critic's rule). `mm_processor_kwargs.size`
  (`vllm_processor_kwargs`) then spans every rubric's bounds, so vLLM's own pass through the critic's processor leaves
  the fitted images as they are instead of enlarging small ones to the processor's default minimum (65536 pixels
  for Qwen3-VL) — vLLM hands these kwargs to the HF processor call; not exercised on CPU CI.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from firm.errors import ConfigError, InputError
from firm.rewards.rubrics import RubricPack
from firm.schemas import Readout, Record
from firm.serving.pbtxt import render_config, render_ensemble
from firm.serving.spec import CRITIC, EDIT_REWARD, ENGINE, GEN_REWARD, ModelSpec

WEIGHTS_DIR = "critic"  # inside <holder>/1/: firm_engine (python engine) or firm_critic (vLLM engine)

_SHIMS = {
    ENGINE.name: "from firm.serving.backend.engine import EngineModel as TritonPythonModel",
    EDIT_REWARD.name: "from firm.serving.backend.reward_models import EditRewardModel as TritonPythonModel",
    GEN_REWARD.name: "from firm.serving.backend.reward_models import GenRewardModel as TritonPythonModel",
}


class BatchingConfig(Record):
    """Triton dynamic batching. Set preferred sizes explicitly: Triton otherwise uses max_batch_size alone, so every
    smaller batch waits the whole queue delay."""

    enabled: bool = True
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    preferred_batch_sizes: list[int] = Field(default_factory=lambda: [4, 8, 16])
    max_queue_delay_us: int = Field(default=3000, ge=0, le=10_000_000)

    @model_validator(mode="after")
    def _check(self) -> BatchingConfig:
        bad = [b for b in self.preferred_batch_sizes if b < 1 or b > self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_sizes {bad} must lie in 1..max_batch_size={self.max_batch_size}"
            )
        return self


class ExportConfig(Record):
    """Everything `firmctl serve export` writes into the repository's config parameters."""

    critic: str = Field(description="critic weights: local dir, file:// or s3:// URI, or a Hugging Face id")
    task: Literal["edit", "gen", "all", "critic"] = Field(
        description="which reward model(s) to export next to firm_critic (critic: firm_critic alone)"
    )
    engine: Literal["python", "vllm"] = "python"
    device: Literal["cpu", "gpu"] = "cpu"
    instances: int = Field(default=1, ge=1, le=64)
    critic_model: bool = Field(
        default=True,
        description="kept so older configs load: firm_critic is always served, the reward models call it "
        "(one copy of the weights); False changes nothing",
    )
    rubrics: str | None = Field(
        default=None,
        description="rubric pack (name, YAML path or URI; None: firm-v1), copied into the repository",
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    weights: Literal["copy", "reference"] = Field(
        default="copy", description="copy the weights into the repository, or reference the critic URI/id"
    )
    readout: Readout = "text"
    confidence: bool = Field(
        default=True,
        description="fill the `confidence` output from the score digit's distribution (False: always NaN; the "
        "benchmark's baseline)",
    )
    max_pixels: int | None = Field(
        default=None,
        ge=28 * 28,
        description="per-image pixel budget (None: the pack's, else the processor's)",
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, le=32768, description="answer budget for every rubric (None: the pack's per axis)"
    )
    dtype: str = Field(
        default="auto", description="torch dtype for the critic: auto, float32, bfloat16, float16"
    )
    threads: int = Field(
        default=0,
        ge=0,
        le=512,
        description="torch intra-op threads per model instance (0: torch's default); instances × threads ≤ cores",
    )
    edit_formulation: str = "cme"
    edit_w_base: float = 0.6
    edit_w_bonus: float = 0.4
    edit_guard_threshold: float | None = Field(
        default=None, description="guard formulation: raw execution score"
    )
    gen_formulation: str = "qma"
    gen_w_base: float = 0.4
    gen_w_bonus: float = 0.6
    gen_quality: bool = Field(
        default=True, description="score the quality rubric too (QMA); False = instruction only"
    )
    policy: Literal["min_reward", "skip"] = Field(
        default="skip",
        description="unparsed answers: skip → reward NaN (client: None); min_reward → 0 + status",
    )
    vllm_engine_args: dict[str, object] = Field(default_factory=dict, description="extra vLLM engine args")
    vllm_models_root: str = Field(
        default="/models", description="where the serving container mounts the repository"
    )

    @model_validator(mode="after")
    def _engine(self) -> ExportConfig:
        if self.engine == "vllm" and self.readout != "text":
            raise ValueError("engine 'vllm' serves the 'text' readout only")
        return self

    @property
    def tasks(self) -> list[str]:
        return {"all": ["edit", "gen"], "critic": []}.get(self.task, [self.task])


def _critic_source_dir(critic: str) -> Path | None:
    """A local directory holding the critic (fetched from file:// or s3:// first); None for a Hugging Face id."""
    if "://" in critic:
        from firm.storage import resolve_local

        return Path(resolve_local(critic))
    p = Path(critic).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(f"critic {critic}: expected a directory saved with save_pretrained")
        if not (p / "config.json").exists():
            raise InputError(f"critic {critic}: no config.json inside (not a save_pretrained directory)")
        return p.resolve()
    if critic.count("/") == 1 and not critic.startswith((".", "/")):
        return None  # looks like a Hugging Face id: always referenced, fetched by the server
    raise InputError(f"critic {critic}: no such directory, and not a URI or a Hugging Face id")


RUBRICS_FILE = "rubrics.yaml"  # next to the weights


def _holder(cfg: ExportConfig) -> str:
    """The model whose version directory holds the weights and the pack."""
    return CRITIC.name if cfg.engine == "vllm" else ENGINE.name


def _model_params(cfg: ExportConfig, critic_ref: str, model: str, pack: RubricPack) -> dict[str, str]:
    params = {
        "critic": critic_ref,
        "rubrics": f"{_holder(cfg)}/1/{RUBRICS_FILE}",
        "rubrics_name": pack.name,
        "rubrics_sha256": pack.sha256,
        "engine": cfg.engine,
        "device": cfg.device,
        "dtype": cfg.dtype,
        "threads": str(cfg.threads),
        "readout": cfg.readout,
        "confidence": str(cfg.confidence).lower(),
        "max_pixels": str(cfg.max_pixels or 0),  # 0: the pack's, else the processor's
        "max_new_tokens": str(cfg.max_new_tokens or 0),  # 0: the pack's, per (task, axis)
        "policy": cfg.policy,
    }
    if model in (EDIT_REWARD.name, ENGINE.name):
        params |= {
            "formulation": cfg.edit_formulation,
            "w_base": str(cfg.edit_w_base),
            "w_bonus": str(cfg.edit_w_bonus),
        }
        if cfg.edit_guard_threshold is not None:
            params["guard_threshold"] = str(cfg.edit_guard_threshold)
    if model in (GEN_REWARD.name, ENGINE.name):
        prefix = "gen_" if model == ENGINE.name else ""  # the engine serves both rewards: their weights apart
        params |= {
            f"{prefix}formulation": cfg.gen_formulation,
            f"{prefix}w_base": str(cfg.gen_w_base),
            f"{prefix}w_bonus": str(cfg.gen_w_bonus),
            "quality": str(cfg.gen_quality).lower(),
        }
    return params


def _write_python_model(
    root: Path, spec: ModelSpec, cfg: ExportConfig, critic_ref: str, reward_max_batch: int, pack: RubricPack
) -> None:
    d = root / spec.name
    (d / "1").mkdir(parents=True, exist_ok=True)
    b = cfg.batching
    # The engine takes firm_critic requests of up to 2 × the reward batch (both axes of a full edit batch).
    max_batch = 2 * reward_max_batch if spec.name == ENGINE.name else b.max_batch_size
    (d / "config.pbtxt").write_text(
        render_config(
            spec,
            max_batch_size=max_batch,
            preferred_batch_sizes=b.preferred_batch_sizes,
            max_queue_delay_us=b.max_queue_delay_us,
            dynamic_batching=b.enabled,
            instances=cfg.instances,
            # vLLM-engine reward models only render prompts, call the critic and parse: they stay on the CPU.
            kind="KIND_GPU" if cfg.device == "gpu" and cfg.engine == "python" else "KIND_CPU",
            parameters=_model_params(cfg, critic_ref, spec.name, pack),
        )
    )
    (d / "1" / "model.py").write_text(
        f'"""Triton python-backend entry for {spec.name}; the code lives in firm.serving.backend."""\n\n'
        f"{_SHIMS[spec.name]}  # noqa: F401\n"
    )


PROMPT_ROOM = 8192  # tokens for the rubric text and two images at the processor's pixel bounds


def vllm_engine_args(
    cfg: ExportConfig, model_path: str, pack: RubricPack, source: Path | None = None
) -> dict[str, object]:
    """Engine args for Triton's vLLM backend (model.json): the critic judges one image pair per prompt, and the
    context fits the prompt plus the longest answer the pack allows (the official generation budget is 8192)."""
    longest = cfg.max_new_tokens or max(r.generation.max_new_tokens for r in pack.rubrics)
    args: dict[str, object] = {
        "model": model_path,
        "dtype": "bfloat16" if cfg.dtype == "auto" else cfg.dtype,
        "disable_log_requests": True,
        "gpu_memory_utilization": 0.85,
        "max_model_len": PROMPT_ROOM + longest,
        "limit_mm_per_prompt": {"image": 2},
        "enforce_eager": False,
        "trust_remote_code": False,
    }
    kwargs = vllm_processor_kwargs(cfg, pack, source)
    if kwargs:
        args["mm_processor_kwargs"] = kwargs
    args.update(cfg.vllm_engine_args)
    return args


def vllm_processor_kwargs(cfg: ExportConfig, pack: RubricPack, source: Path | None) -> dict[str, object]:
    """Processor kwargs for vLLM: `size` bounds that hold every image the reward models fit (the loosest of the
    pack's rubrics under `firm.critic.critic.rubric_pixel_rule`), read from the critic's processor in `source`.
    Without a local critic (a Hugging Face id) only an explicit `max_pixels` can be passed (empty when none)."""
    if source is None:
        return {"max_pixels": cfg.max_pixels} if cfg.max_pixels else {}
    from transformers import AutoConfig

    from firm.critic.critic import load_processor, rubric_pixel_rule

    processor = load_processor(str(source), AutoConfig.from_pretrained(source).model_type)
    rules = [rubric_pixel_rule(processor, r, cfg.max_pixels) for r in pack.rubrics if r.role == "student"]
    return {
        "size": {
            "shortest_edge": min(r.min_pixels for r in rules),
            "longest_edge": max(r.max_pixels for r in rules),
        }
    }


def _write_vllm_critic(
    root: Path, cfg: ExportConfig, model_path: str, pack: RubricPack, source: Path | None
) -> None:
    d = root / CRITIC.name
    (d / "1").mkdir(parents=True, exist_ok=True)
    # The vLLM backend declares its own tensors (text_input, image, sampling_parameters, … → text_output), is
    # decoupled, and batches continuously inside the engine: Triton requires max_batch_size 0 for it.
    (d / "config.pbtxt").write_text(
        render_config(
            CRITIC,
            backend="vllm",
            max_batch_size=0,
            preferred_batch_sizes=None,
            max_queue_delay_us=0,
            dynamic_batching=False,
            instances=cfg.instances,
            kind="KIND_MODEL",
            parameters={
                "REPORT_CUSTOM_METRICS": "true",
                "rubrics_name": pack.name,
                "rubrics_sha256": pack.sha256,
            },
            declare_io=False,
            decoupled=True,
        )
    )
    args = vllm_engine_args(cfg, model_path, pack, source)
    (d / "1" / "model.json").write_text(json.dumps(args, indent=2) + "\n")


def build_repository(cfg: ExportConfig, out_dir: Path) -> Path:
    """Write the complete model repository into `out_dir` (which must be empty or absent)."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"export target {out_dir} is not empty")
    from firm.rewards.packs import warn_if_mismatched
    from firm.rubric_store import load_pack, save_pack

    pack = load_pack(cfg.rubrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = _critic_source_dir(cfg.critic)
    warn_if_mismatched(cfg.critic, src, pack)
    reward_models = [EDIT_REWARD if t == "edit" else GEN_REWARD for t in cfg.tasks]
    # Copied weights live inside a model's version directory (a top-level folder would be taken for a model).
    weights_ref = f"{_holder(cfg)}/1/{WEIGHTS_DIR}"
    if cfg.weights == "copy" and src is not None:
        shutil.copytree(src, out_dir / weights_ref, ignore=shutil.ignore_patterns("MANIFEST.json", ".*"))
        critic_ref = weights_ref  # relative to the repository root
    else:
        critic_ref = str(src) if (src is not None and "://" not in cfg.critic) else cfg.critic

    if cfg.engine == "vllm":
        # vLLM reads a path inside the serving container; a copied critic lives next to model.json.
        model_path = (
            f"{cfg.vllm_models_root.rstrip('/')}/{weights_ref}" if critic_ref == weights_ref else critic_ref
        )
        _write_vllm_critic(out_dir, cfg, model_path, pack, src)
        for spec in reward_models:  # python models that call the vLLM critic through BLS
            _write_python_model(out_dir, spec, cfg, critic_ref, cfg.batching.max_batch_size, pack)
    else:
        _write_python_model(out_dir, ENGINE, cfg, critic_ref, cfg.batching.max_batch_size, pack)
        for spec in [CRITIC, *reward_models]:
            max_batch = cfg.batching.max_batch_size * (2 if spec is CRITIC else 1)
            # An ensemble still needs a version directory; a file keeps it in object stores, which have no folders.
            (out_dir / spec.name / "1").mkdir(parents=True, exist_ok=True)
            (out_dir / spec.name / "1" / "ENSEMBLE").write_text(f"{spec.name} is served by {ENGINE.name}\n")
            (out_dir / spec.name / "config.pbtxt").write_text(
                render_ensemble(
                    spec,
                    engine=ENGINE.name,
                    max_batch_size=max_batch,
                    parameters={"rubrics_name": pack.name, "rubrics_sha256": pack.sha256},
                )
            )
    save_pack(
        pack,
        out_dir / _holder(cfg) / "1" / RUBRICS_FILE,
        header=f"# rubric pack {pack.ref}, exported with this repository",
    )
    (out_dir / "firm_export.json").write_text(cfg.model_dump_json(indent=2) + "\n")
    return out_dir


def export_repository(cfg: ExportConfig, out: str | Path, *, overwrite: bool = False) -> str:
    """Export to a local directory (built aside, then renamed into place) or publish to a file:// / s3:// URI
    (files first, MANIFEST.json last, via `firm.storage.publish_dir`). Returns where it went. An existing,
    non-empty target is refused unless `overwrite` (`firm.storage.targets`)."""
    from firm.storage.targets import check_target, clear_target

    out_s = str(out)
    if "://" in out_s:
        from firm.storage import publish_dir

        replace = check_target(out_s, "--out", overwrite=overwrite)
        with tempfile.TemporaryDirectory(prefix="firm-export-") as tmp:
            build_repository(cfg, Path(tmp) / "repo")
            if replace:
                clear_target(out_s)
            publish_dir(Path(tmp) / "repo", out_s, producer="firm.serving.export")
        return out_s
    target = Path(out_s).expanduser().resolve()
    check_target(target, "--out", overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build_repository(cfg, tmp / "repo")
        if target.exists():
            old = tmp / "old"
            os.rename(target, old)
        os.rename(tmp / "repo", target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def read_export_config(repository: str | Path) -> ExportConfig:
    """The ExportConfig a repository was written with (firm_export.json at its root)."""
    p = Path(repository) / "firm_export.json"
    if not p.exists():
        raise ConfigError(f"{repository}: no firm_export.json (not written by `firmctl serve export`)")
    return ExportConfig.model_validate_json(p.read_text())
