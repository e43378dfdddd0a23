"""Shipped recipe configs: YAML files under `firm/recipes/<kind>/` (e.g. `critic/tiny_cpu.yaml`, `rl/…`).

Discovered by glob, so adding a recipe is dropping a YAML file into its kind's folder. A recipe is named
`<kind>/<stem>`; a bare `<stem>` works when it is unique across kinds. Each file starts with a comment block
giving the exact commands to run it (torchtune style); `list_recipes()` reports its first line as the description.
`resolve_config` also accepts a YAML path or a `file://` / `s3://` URI (how a cluster job reads a recipe that is
not shipped in its image).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from firm.errors import ConfigError

RECIPES_DIR = Path(__file__).parent


class RecipeInfo(BaseModel):
    name: str
    kind: str
    path: Path
    description: str


def _description(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text:
            return text
        if line.strip() and not line.startswith("#"):
            break
    return ""


def list_recipes(kind: str | None = None) -> list[RecipeInfo]:
    """Every shipped recipe (optionally of one kind), sorted by name."""
    out = []
    for path in sorted(RECIPES_DIR.glob("*/*.yaml")):
        k = path.parent.name
        if kind is not None and k != kind:
            continue
        out.append(RecipeInfo(name=f"{k}/{path.stem}", kind=k, path=path, description=_description(path)))
    return out


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe: `critic/tiny_cpu`, `critic/tiny_cpu.yaml` or a unique `tiny_cpu`."""
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    recipes = list_recipes()
    exact = [r for r in recipes if r.name == stem]
    if exact:
        return exact[0].path
    by_stem = [r for r in recipes if r.path.stem == stem]
    if len(by_stem) == 1:
        return by_stem[0].path
    known = ", ".join(r.name for r in recipes) or "(none)"
    if len(by_stem) > 1:
        raise ConfigError(f"recipe {name!r} is ambiguous: {', '.join(r.name for r in by_stem)}")
    raise ConfigError(f"no config file or shipped recipe named {name!r}; shipped recipes: {known}")


def resolve_config(ref: str) -> Path:
    """A local file for a config reference: an existing YAML path, a `file://` / `s3://` URI of a YAML object
    (fetched into `$FIRM_HOME/cache/configs/`, named by its content hash), or a shipped recipe name."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    from firm.storage.uris import is_uri

    if is_uri(ref):
        import hashlib

        from firm.config import get_settings
        from firm.storage import read_bytes

        data = read_bytes(ref)
        dest = get_settings().home / "cache" / "configs" / f"{hashlib.sha256(data).hexdigest()[:16]}.yaml"
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(dest)
        return dest
    return recipe_path(ref)
