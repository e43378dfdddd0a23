"""Finding, loading and saving rubric packs, and checking that a critic is asked with the prompts it learned.

`load_pack(ref)` resolves, in order:
- None → `firm-v1` (FIRM's own pack, shipped in `firm/rewards/rubric_packs/`);
- an already loaded `RubricPack` → itself;
- an existing path to a YAML file;
- a name → `firm/rewards/rubric_packs/NAME.yaml`, then `$FIRM_HOME/rubrics/NAME.yaml` (where
  `firmctl rubrics import-official` writes by default).

This package never touches the object store: a `file://` or `s3://` URI of a pack YAML is read (and written) by the
callers through `firm.rubric_store`, whose `load_pack` / `save_pack` take every reference these take plus URIs, and
parse with `parse_pack` / serialise with `pack_text` here.

Critic provenance: critic SFT writes `firm_rubrics.json` (pack name, version, sha256) next to the weights it saves.
`pack_mismatch(critic_source, pack)` compares it — or, for the released FIRM critics, the pack's `trained_critics`
— with the pack about to be used, and returns the warning to print when they differ.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from firm.errors import ConfigError, InputError
from firm.rewards.rubrics import DEFAULT_PACK, Rubric, RubricPack, pack_from_data

_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where PyYAML has it: ~12x faster

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).with_name("rubric_packs")
PROVENANCE_FILE = "firm_rubrics.json"
# The critics released with the paper (HF collection VisionXLab/firm-reward), trained on the official templates.
RELEASED_CRITICS = {"firm-edit-8b": "VisionXLab/FIRM-Edit-8B", "firm-gen-8b": "VisionXLab/FIRM-Gen-8B"}

_cache: dict[tuple[str, float], RubricPack] = {}


def user_dir() -> Path:
    """`$FIRM_HOME/rubrics`: imported and user packs."""
    from firm.config import get_settings

    return get_settings().home / "rubrics"


def _named(name: str) -> Path | None:
    for d in (BUILTIN_DIR, user_dir()):
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    return None


def available_packs() -> list[str]:
    """Names of the packs found by name (built-in first, then `$FIRM_HOME/rubrics`)."""
    names: list[str] = []
    for d in (BUILTIN_DIR, user_dir()):
        if d.is_dir():
            names += [p.stem for p in sorted(d.glob("*.yaml")) if p.stem not in names]
    return names


def parse_pack(text: str, where: str) -> RubricPack:
    """A pack from YAML text; errors name the pack (or `where`) and the field."""
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"rubric pack {where}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"rubric pack {where}: expected a mapping with name, version and rubrics")
    return pack_from_data(data, where)


def load_pack(ref: str | Path | RubricPack | None = None) -> RubricPack:
    """Resolve and load a pack (see the module docstring). An unknown name raises `InputError` listing the known ones."""
    if isinstance(ref, RubricPack):
        return ref
    text = DEFAULT_PACK if ref is None else str(ref)
    if "://" in text:
        raise InputError(
            f"rubric pack {text}: a URI is read through the object store (firm.rubric_store.load_pack)"
        )
    path = Path(text).expanduser()
    if not path.is_file():
        named = _named(text) if "/" not in text and not text.endswith((".yaml", ".yml")) else None
        if named is None:
            known = ", ".join(available_packs()) or "none"
            raise InputError(
                f"rubric pack {text!r} not found (known packs: {known}; or pass a YAML path or URI)"
            )
        path = named
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _cache:
        _cache[key] = parse_pack(path.read_text(encoding="utf-8"), str(path))
    return _cache[key]


def dump_pack(pack: RubricPack, header: str = "") -> str:
    """The pack as YAML (multi-line templates as literal blocks), optionally after a comment header."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> Any:
        style = (
            "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
        )
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    data = json.loads(pack.model_dump_json())
    for r in data["rubrics"]:
        r.pop("pack", None)
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return (header.rstrip("\n") + "\n" if header else "") + body


def pack_text(pack: RubricPack, header: str = "") -> str:
    """`dump_pack`'s YAML, checked to load back as a pack: what `save_pack` (here or in `firm.rubric_store`) writes."""
    text = dump_pack(pack, header)
    parse_pack(text, pack.name)  # what is written must load back as the same pack
    return text


def save_pack(pack: RubricPack, dest: str | Path | None = None, header: str = "") -> str:
    """Write a pack as YAML to a path, a directory (NAME.yaml inside), or by default to
    `$FIRM_HOME/rubrics/NAME.yaml` (a `file://`/`s3://` URI: `firm.rubric_store.save_pack`). Writes are atomic.
    Returns where it went."""
    text = pack_text(pack, header)
    target = str(dest) if dest is not None else str(user_dir())
    if "://" in target:
        raise InputError(
            f"rubric pack {pack.name}: {target} is written through the object store "
            "(firm.rubric_store.save_pack)"
        )
    path = Path(target).expanduser()
    if path.is_dir() or not path.suffix:
        path = path / f"{pack.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return str(path)


def get_rubric(task: str, axis: str, role: str = "student", pack: str | RubricPack | None = None) -> Rubric:
    """The rubric for (task, axis, role) of `pack` (a name, a path, a loaded pack; None: firm-v1)."""
    return load_pack(pack).get(task, axis, role)


def rubric_by_id(rubric_id: str, pack: str | RubricPack | None = None) -> Rubric:
    """Look up a rubric by its id, e.g. 'edit.execution.student.firm-v1'."""
    return load_pack(pack).by_id(rubric_id)


# ------------------------------------------------------------------------------------------------ provenance


def write_provenance(directory: str | Path, pack: RubricPack) -> None:
    """Record in a critic directory which pack its training used."""
    info = {"name": pack.name, "version": pack.version, "sha256": pack.sha256}
    (Path(directory) / PROVENANCE_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_provenance(directory: str | Path) -> dict[str, str] | None:
    p = Path(directory) / PROVENANCE_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and "sha256" in data else None


def released_critic(source: str) -> str | None:
    """The released FIRM critic a model source names (HF id, or a directory/URI ending in its name), else None."""
    last = str(source).rstrip("/").rsplit("/", 1)[-1].lower()
    return RELEASED_CRITICS.get(last)


def pack_mismatch(source: str, local_dir: str | Path | None, pack: RubricPack) -> str | None:
    """A warning when the critic at `source` learned other prompts than `pack`'s, else None."""
    if local_dir is not None:
        prov = read_provenance(local_dir)
        if prov is not None and prov["sha256"] != pack.sha256:
            return (
                f"critic {source} was trained with rubric pack {prov.get('name', '?')}@{prov['sha256'][:12]}, "
                f"but rubric pack {pack.ref} is in use: its scores will not mean what they meant in training "
                f"(pass --rubrics {prov.get('name', 'NAME')})"
            )
        if prov is not None:
            return None
    released = released_critic(source)
    if released is not None and released not in pack.trained_critics:
        return (
            f"critic {source} is the released {released}, trained on the official FIRM templates, but rubric pack "
            f"{pack.ref} is not that pack: import it with `firmctl rubrics import-official SRC` and pass "
            "--rubrics firm-official"
        )
    return None


def warn_if_mismatched(source: str, local_dir: str | Path | None, pack: RubricPack) -> str | None:
    """Log `pack_mismatch`'s warning (once per call) and return it."""
    msg = pack_mismatch(source, local_dir, pack)
    if msg:
        log.warning("%s", msg)
    return msg
