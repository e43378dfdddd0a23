"""Rubric packs in the object store: what every stage, the CLI, serving and the pipelines call to load and save a pack.

`firm.rewards.packs` parses and finds packs by name or path and never touches the object store; this module adds
`file://` and `s3://` URIs of pack YAML files, read and written through `firm.storage`. Every other reference (None,
a loaded `RubricPack`, a name, a path) goes to `firm.rewards.packs` unchanged. `firm.storage` is imported only when a
URI is read or written (importing it costs about a second). `import_official` reads the official templates (a
checkout or a URL prefix) for `firm.rewards.official.official_pack`.
"""

from __future__ import annotations

from pathlib import Path

from firm.errors import InputError
from firm.rewards import official, packs
from firm.rewards.rubrics import RubricPack


def _uri(ref: str | Path | RubricPack | None) -> str | None:
    if ref is None or isinstance(ref, RubricPack):
        return None
    text = str(ref)
    return text if "://" in text else None


def load_pack(ref: str | Path | RubricPack | None = None) -> RubricPack:
    """`firm.rewards.packs.load_pack`, and a `file://` / `s3://` URI of a pack YAML read through the object store."""
    uri = _uri(ref)
    if uri is None:
        return packs.load_pack(ref)
    from firm.storage import read_bytes

    try:
        return packs.parse_pack(read_bytes(uri).decode("utf-8"), uri)
    except FileNotFoundError:
        raise InputError(f"rubric pack {uri}: no such object") from None


def save_pack(pack: RubricPack, dest: str | Path | None = None, header: str = "") -> str:
    """`firm.rewards.packs.save_pack`, and a `file://` / `s3://` destination: the URI of a YAML file, or a prefix
    (NAME.yaml under it). Returns where the pack went."""
    target = _uri(dest)
    if target is None:
        return packs.save_pack(pack, dest, header)
    text = packs.pack_text(pack, header)
    from firm.storage import write_bytes

    uri = target if target.endswith((".yaml", ".yml")) else f"{target.rstrip('/')}/{pack.name}.yaml"
    write_bytes(uri, text.encode("utf-8"))
    return uri


def _official_file(src: str, rel: str, timeout: float) -> bytes:
    """One official template file: `src` is a FIRM-Reward checkout or an http(s) URL prefix."""
    if src.startswith(("http://", "https://")):
        import httpx

        url = f"{src.rstrip('/')}/{rel}"
        try:
            resp = httpx.get(url, timeout=timeout, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise InputError(f"import-official: cannot fetch {url} ({exc})") from None
        if resp.status_code != 200:
            raise InputError(f"import-official: {url} answered HTTP {resp.status_code}")
        return resp.content
    path = Path(src).expanduser() / rel
    if not path.is_file():
        raise InputError(
            f"import-official: {path} not found (SRC must be a FIRM-Reward checkout or URL prefix)"
        )
    return path.read_bytes()


def import_official(
    src: str, *, name: str = official.DEFAULT_NAME, expect_sha256: str | None = None, timeout: float = 30.0
) -> RubricPack:
    """The official pack (`firm.rewards.official`) from a FIRM-Reward checkout directory or URL prefix; `timeout`:
    seconds per file fetched from a URL."""
    return official.official_pack(
        lambda rel: _official_file(src, rel, timeout), src, name=name, expect_sha256=expect_sha256
    )
