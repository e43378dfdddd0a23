"""Render Triton `config.pbtxt` (protobuf text format) for FIRM's models — no templating engine, no surprises."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from firm.serving.spec import ModelSpec, TensorSpec, engine_output_name


def _q(s: str) -> str:
    return json.dumps(s)  # protobuf text format accepts JSON-style double-quoted strings


def _tensor(t: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    optional = "\n    optional: true" if t.optional else ""
    return (
        f"  {{\n    name: {_q(t.name)}\n    data_type: {t.config_dtype}\n    dims: [ {dims} ]{optional}\n  }}"
    )


def _tensors(kind: str, tensors: Iterable[TensorSpec]) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor(t) for t in tensors) + "\n]"


def render_config(
    spec: ModelSpec,
    *,
    backend: str = "python",
    max_batch_size: int,
    preferred_batch_sizes: list[int] | None,
    max_queue_delay_us: int,
    dynamic_batching: bool,
    instances: int,
    kind: str,
    parameters: Mapping[str, str],
    declare_io: bool = True,
    decoupled: bool = False,
) -> str:
    """A complete config.pbtxt. `kind` is KIND_CPU, KIND_GPU or KIND_MODEL; parameters become string_value entries."""
    parts = [
        f"# Written by `firmctl serve export` (firm/serving/export.py). Model: {spec.name}.",
        f"name: {_q(spec.name)}",
        f"backend: {_q(backend)}",
        f"max_batch_size: {max_batch_size}",
    ]
    if declare_io:
        parts += [_tensors("input", spec.inputs), _tensors("output", spec.outputs)]
    if dynamic_batching:
        body = []
        if preferred_batch_sizes:
            body.append(
                "  preferred_batch_size: [ " + ", ".join(str(b) for b in preferred_batch_sizes) + " ]"
            )
        body.append(f"  max_queue_delay_microseconds: {max_queue_delay_us}")
        parts.append("dynamic_batching {\n" + "\n".join(body) + "\n}")
    parts.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    if decoupled:
        parts.append("model_transaction_policy {\n  decoupled: true\n}")
    parts += _parameters(parameters)
    return "\n".join(parts) + "\n"


def _parameters(parameters: Mapping[str, str]) -> list[str]:
    return [
        f"parameters {{\n  key: {_q(key)}\n  value: {{ string_value: {_q(str(value))} }}\n}}"
        for key, value in parameters.items()
    ]


def render_ensemble(
    spec: ModelSpec, *, engine: str, max_batch_size: int, parameters: Mapping[str, str]
) -> str:
    """A config.pbtxt for a one-step ensemble: `spec`'s tensors, routed to and from `engine` (same names, except
    outputs the engine renames, `firm.serving.spec.engine_output_name`).
    An ensemble has no process and no queue of its own: the engine's dynamic batcher merges its requests."""
    step = [f"      model_name: {_q(engine)}", "      model_version: -1"]
    step += [f"      input_map {{ key: {_q(t.name)} value: {_q(t.name)} }}" for t in spec.inputs]
    step += [
        f"      output_map {{ key: {_q(engine_output_name(t.name))} value: {_q(t.name)} }}"
        for t in spec.outputs
    ]
    parts = [
        f"# Written by `firmctl serve export` (firm/serving/export.py). Model: {spec.name}, served by {engine}.",
        f"name: {_q(spec.name)}",
        'platform: "ensemble"',
        f"max_batch_size: {max_batch_size}",
        _tensors("input", spec.inputs),
        _tensors("output", spec.outputs),
        "ensemble_scheduling {\n  step [\n    {\n" + "\n".join(step) + "\n    }\n  ]\n}",
        *_parameters(parameters),
    ]
    return "\n".join(parts) + "\n"


# a repeated field, as a list (`input [ {...}, ... ]`, what `render_config` writes) or entry by entry (`input { ... }`)
_DECLARED = {kind: re.compile(rf"^\s*{kind}\s*:?\s*[\[{{]", re.M) for kind in ("input", "output")}


def declares_tensors(config_text: str) -> bool:
    """Whether a config.pbtxt declares its inputs and outputs, as FIRM's python models and ensembles do, in either
    of protobuf text's forms for a repeated field. A vLLM-backend critic does not: its backend declares them through
    Triton's auto-complete."""
    return all(p.search(config_text) for p in _DECLARED.values())


def read_parameters(model_config: Mapping[str, object]) -> dict[str, str]:
    """`parameters` of a model config as Triton hands it to a python backend (JSON dict) → plain str dict."""
    params = model_config.get("parameters") or {}
    out: dict[str, str] = {}
    if isinstance(params, Mapping):
        for k, v in params.items():
            out[str(k)] = str(v.get("string_value", "")) if isinstance(v, Mapping) else str(v)
    return out
