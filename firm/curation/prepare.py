"""Prepare the critic SFT dataset of a run: what a pipeline's `curate` step calls.

`prepare_sft_dataset(source, curation=...)`:
- `synthetic` → the learnable known-answer dataset of `firm.curation.synthetic_sft` (both editing axes), published
  once under a content-addressed URI (`<datasets>/synthetic/sft-<hash of its parameters>`): a rerun with the same
  parameters reuses it;
- `curate-edit` / `curate-gen` → teacher curation of a JSONL manifest (`firm.curation.edit.curate_edit`,
  difference-first; `firm.curation.gen.curate_gen`, plan-then-score) with the teachers and settings of
  `CurationParams` (the pipelines' `curation_*` parameters), published under
  `<datasets>/curated/<kind>-<hash of the parameters and the manifest's bytes>`: a rerun with the same parameters
  and manifest reuses the published dataset; a crashed run resumes from the teacher-call cache
  (`<datasets>/teacher-cache`), paying for no call twice;
- a dataset URI or directory → opened and validated (every row, every image) and used as it is: published datasets
  are immutable, so the URI itself is the address.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firm.curation.dataset import SFTDataset, read_sft_dataset
from firm.errors import InputError

SYNTHETIC = "synthetic"
CURATE = {"curate-edit": "edit", "curate-gen": "gen"}
PARAM_PREFIX = "curation_"  # the pipelines' parameter names: curation_<field>


class CurationParams(BaseModel):
    """Teacher curation as a pipeline step runs it (`firmctl data curate-edit|curate-gen` from the CLI). Field
    `x` is the pipelines' parameter `curation_x`; errors name that parameter."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(
        default="", description="the JSONL manifest (edit pairs or generations): a path or URI"
    )
    teacher: str = Field(
        default="",
        description="edits: the report and scoring VLM; gen: the scorer. An OpenAI-compatible endpoint URL "
        "(http(s)://host:port, openai://host:port) or a local critic (path, HF id, file:// / s3:// URI)",
    )
    teacher_model: str = Field(default="", description="the model name at the teacher endpoint")
    planner: str = Field(default="", description="gen: the checklist LLM (empty: the teacher)")
    planner_model: str = Field(default="", description="the model name at the planner endpoint")
    rewrite_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, description="edits: share of instructions rewritten"
    )
    balance: dict[str, str] = Field(
        default_factory=dict, description="axis -> target (paper, uniform, 5:50,...)"
    )
    concurrency: int = Field(default=8, ge=1, le=4096, description="teacher requests in flight")
    val_fraction: float = Field(default=0.01, ge=0.0, lt=1.0)
    leak_policy: Literal["clean", "drop", "keep"] = "clean"


def check_curation(kind: str, params: CurationParams | dict[str, Any]) -> CurationParams:
    """Validated curation parameters for `kind` (edit | gen); one `InputError` naming the pipeline parameter."""
    try:
        p = params if isinstance(params, CurationParams) else CurationParams.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(x) for x in err.get("loc", ()))
        raise InputError(f"{PARAM_PREFIX}{name}: {err.get('msg')}") from None
    for name in ("input", "teacher"):
        if not getattr(p, name).strip():
            raise InputError(
                f"{PARAM_PREFIX}{name}: required when dataset_source is curate-{kind} ({CurationParams.model_fields[name].description})"
            )
    if kind == "gen" and p.rewrite_ratio:
        raise InputError(f"{PARAM_PREFIX}rewrite_ratio: instruction rewriting is for curate-edit only")
    return p


def dataset_stats(ds: SFTDataset) -> dict[str, Any]:
    """Row counts per split and per (task, axis, score), and the rows the reader skipped."""
    per: Counter[str] = Counter(f"{r.task}/{r.axis}/{r.score}" for r in ds.rows)
    return {
        "splits": ds.counts(),
        "by_task_axis_score": dict(sorted(per.items())),
        "skipped": len(ds.skipped),
    }


def _manifest_digest(uri: str) -> str:
    from firm.curation.inputs import read_image_bytes

    try:
        data = read_image_bytes(uri)  # the bytes of any local path or URI
    except InputError:
        raise InputError(f"{PARAM_PREFIX}input: manifest {uri} cannot be read") from None
    return hashlib.sha256(data).hexdigest()


def _curate(kind: str, p: CurationParams, *, seed: int, rubrics: str | None) -> tuple[str, dict[str, Any]]:
    from firm.config import get_settings
    from firm.curation.teachers import make_teacher
    from firm.storage import is_published

    params = p.model_dump() | {"kind": kind, "seed": seed, "rubrics": rubrics or None}
    params["manifest_sha256"] = _manifest_digest(p.input)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    uri = f"{get_settings().bucket_uris()['datasets']}/curated/{kind}-{digest}"
    if is_published(uri):  # published before with the same parameters and manifest
        from firm.curation.stats import read_stats

        return uri, _summary(read_stats(uri)) | {"reused": True}

    def teacher(spec: str, model: str) -> Any:
        return make_teacher(spec, model=model or None, concurrency=p.concurrency)

    common = {
        "input": p.input, "out": uri, "name": f"curated-{kind}", "rubrics": rubrics or None, "seed": seed,
        "val_fraction": p.val_fraction, "leak_policy": p.leak_policy, "balance": dict(p.balance), "progress": False,
        "overwrite": True,  # content-addressed and not published: only an unfinished earlier attempt is there
    }  # fmt: skip
    if kind == "edit":
        from firm.curation.edit import EditCurationConfig, curate_edit

        res = curate_edit(
            EditCurationConfig(**common, rewrite_ratio=p.rewrite_ratio), teacher(p.teacher, p.teacher_model)
        )
    else:
        from firm.curation.gen import GenCurationConfig, curate_gen

        scorer = teacher(p.teacher, p.teacher_model)
        planner = teacher(p.planner, p.planner_model) if p.planner else scorer
        res = curate_gen(GenCurationConfig(**common), planner, scorer)
    return res.uri, _summary(res.stats) | {"reused": False}


def _summary(st: dict[str, Any]) -> dict[str, Any]:
    """The part of a curation's `stats.json` a pipeline step shows."""
    return {
        "items": st["items"],
        "samples_written": st["samples"]["written"],
        "teacher_calls": st["teacher"]["calls"],
        "teacher_cache_hits": st["teacher"]["cache_hits"],
        "teacher_tokens": st["teacher"]["prompt_tokens"] + st["teacher"]["completion_tokens"],
    }


def prepare_sft_dataset(
    source: str,
    *,
    n_items: int = 400,
    seed: int = 0,
    size: int = 112,
    requested: int = 4,
    curation: CurationParams | dict[str, Any] | None = None,
    rubrics: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """(dataset URI, stats) for `source` (see the module docstring); `stats["curation"]` for curated sources."""
    from firm.config import get_settings
    from firm.storage import is_published

    uri = source
    extra: dict[str, Any] = {}
    if source == SYNTHETIC:
        params = {"n_edit": n_items, "axes": ["execution", "consistency"], "requested": requested,
                  "size": size, "val_fraction": 0.05, "seed": seed}  # fmt: skip
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
        uri = f"{get_settings().bucket_uris()['datasets']}/synthetic/sft-{digest}"
        if not is_published(uri):
            from firm.curation.synthetic_sft import write_synthetic_sft_dataset

            write_synthetic_sft_dataset(uri, **params)  # type: ignore[arg-type]
    elif source in CURATE:
        kind = CURATE[source]
        uri, extra = _curate(kind, check_curation(kind, curation or {}), seed=seed, rubrics=rubrics)
    ds = read_sft_dataset(uri, on_bad_row="reject")
    stats = dataset_stats(ds)
    if source in CURATE:
        stats["curation"] = extra
    return uri, stats
