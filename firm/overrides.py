"""`key=value` overrides on top of a YAML config, checked against the pydantic model they configure.

Used by the critic SFT recipes, the RL recipes and the job specs (`firm.launch.spec`) alike. Keys are dotted paths
into the model (`optim.lr=2e-5`, `batch.per_device=4`); values are parsed as YAML scalars or lists
(`lora.target_modules=[q_proj]`). A key the model does not have is a `ConfigError` that names the override and the
valid keys at that level, so a typo never silently runs with a default. Below a `dict[...]`-typed field
(e.g. `reward.options.temperature=0.5`) any key is accepted.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from firm.errors import ConfigError

# libyaml's loader where PyYAML was built with it (the wheels are): the same documents, ~12x faster to parse than the
# pure-Python SafeLoader (a recipe or job spec: ~20 ms -> ~2 ms)
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml_mapping(path: Any, what: str = "") -> dict[str, Any]:
    """The mapping a config YAML file holds; a `ConfigError` naming the file for an empty file (or one with only
    comments), invalid YAML, or anything but a mapping — never a "missing field" further on. `what`: a prefix such
    as `"job spec "`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{what}{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        raise ConfigError(f"{what}{path}: empty file (expected a mapping of settings)")
    if not isinstance(data, dict):
        raise ConfigError(f"{what}{path}: expected a mapping, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """An override value as YAML (`4` → int, `[a, b]` → list, `null` → None); unparseable text stays a string."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def split_override(item: str) -> tuple[str, str]:
    """`a.b=value` → (`a.b`, `value`); anything without `=` is a `ConfigError` naming it."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    return key, value


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field annotation (`Section`, `Section | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _model_types(a)]
    return []


def _is_mapping(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_mapping(a) for a in typing.get_args(annotation))
    return annotation is dict or typing.get_origin(annotation) is dict


def apply_overrides(
    data: dict[str, Any], overrides: list[str], model: type[BaseModel] | None = None
) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a raw config mapping, in place. With `model`, every key must exist in it."""
    for item in overrides:
        key, raw = split_override(item)
        parts = key.split(".")
        cls: type[BaseModel] | None = model
        free = model is None  # below a dict field (or without a model) any key goes
        node = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if not free:
                assert cls is not None
                field = cls.model_fields.get(part)
                if field is None:
                    where = ".".join(parts[:i]) or "the top level"
                    known = ", ".join(sorted(cls.model_fields))
                    raise ConfigError(
                        f"unknown config key {key!r} in override {item!r}: {part!r} is not a key of {where} "
                        f"(known: {known})"
                    )
                if not last:
                    subs = _model_types(field.annotation)
                    if subs:
                        cls = subs[0]
                    elif _is_mapping(field.annotation):
                        free = True
                    else:
                        raise ConfigError(
                            f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section"
                        )
            if last:
                node[part] = parse_value(raw)
                break
            existing = node.get(part)
            if not isinstance(existing, dict):
                if existing is not None and free:
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
                existing = {}
                node[part] = existing
            node = existing
    return data


def blame(loc: str, overrides: list[str] | None, source: str) -> str:
    """What to name in a validation error at `loc` (a dotted key): the override that set it (or the section above
    or below it) when there is one, else `source` (the recipe file). An override is what the user just typed."""
    hits = []
    for item in overrides or []:
        if "=" not in item:
            continue
        key = item.split("=", 1)[0].strip()
        if loc and (key == loc or loc.startswith(key + ".") or key.startswith(loc + ".")):
            hits.append(item)
    return f"override {hits[-1]!r}" if hits else source  # the last one wins, as when they were applied
