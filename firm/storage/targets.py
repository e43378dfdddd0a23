"""The one rule for every command that writes a dataset, checkpoint prefix, export or publication: an existing,
non-empty target is refused unless the user says `--overwrite` (or a documented `--resume` continues it).

`check_target(target, what, overwrite=...)` is called at a command's entry, before any expensive work (models,
teachers, processes), so a refusal costs nothing and changes nothing. `clear_target(target)` removes what an
`--overwrite` replaces (manifests first, so readers stop resolving it at once), just before the new data is written.
The refusal reads the same everywhere: `<what> <target>: already exists and is not empty; pass --overwrite to
replace it` (`TARGET_EXISTS` is the shared part).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from firm.errors import InputError, MissingBucketError
from firm.storage.base import dir_prefix
from firm.storage.uris import is_uri, parse_uri

TARGET_EXISTS = "already exists and is not empty; pass --overwrite to replace it"


def target_exists(target: str | Path) -> bool:
    """True when `target` (a local path, `file://` or `s3://` URI) is an existing file, a non-empty directory, or
    an object / a prefix holding objects. A missing bucket holds nothing."""
    if not is_uri(str(target)) or str(target).startswith("file://"):
        path = parse_uri(str(target)).local_path if is_uri(str(target)) else Path(target).expanduser()
        if path.is_dir():
            return any(path.iterdir())
        return path.exists()
    from firm.storage.stores import open_store

    store, key = open_store(str(target))
    try:
        if key and not key.endswith("/") and store.exists(key):
            return True
        return next(iter(store.list(dir_prefix(key))), None) is not None
    except MissingBucketError:
        return False


def exists_message(what: str, target: str | Path, resume: str | None = None) -> str:
    """The one refusal text (`resume`: the option that continues the existing run instead, e.g. `--resume auto`)."""
    more = f" (or {resume} to continue it)" if resume else ""
    return f"{what} {target}: {TARGET_EXISTS}{more}"


def check_target(
    target: str | Path, what: str, *, overwrite: bool = False, resume: str | None = None
) -> bool:
    """Refuse an existing non-empty `target` (an `InputError` with the shared message) unless `overwrite`.

    `what` names the option or field that chose the target (`--out`, `output_uri`). Returns True when the target
    exists and `overwrite` allows replacing it (the caller then calls `clear_target` right before writing)."""
    if not target_exists(target):
        return False
    if overwrite:
        return True
    raise InputError(exists_message(what, target, resume))


def clear_target(target: str | Path) -> None:
    """Remove everything at `target` (what `--overwrite` replaces): a local file or directory tree, or every object
    under the prefix (manifests first)."""
    if not is_uri(str(target)) or str(target).startswith("file://"):
        path = parse_uri(str(target)).local_path if is_uri(str(target)) else Path(target).expanduser()
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        return
    from firm.storage.stores import open_store

    store, key = open_store(str(target))
    try:
        if key and not key.endswith("/") and store.exists(key):
            store.delete([key])
        store.delete_prefix(dir_prefix(key))
    except MissingBucketError:
        return
