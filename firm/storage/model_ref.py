"""Where a model reference points, decided once, before anything is loaded or any rank starts.

Every model-loading entry point (`bench run --critic`, `critic train model.path=`, `rl train policy.uri=`,
`rl sample --policy/--lora`, `serve export --critic`, local curation teachers) passes its value through
`check_model_ref(value, what)`:

- a `file://` / `s3://` URI is left to the object store (`resolve_local` names a missing one);
- an existing local path is used as is;
- a value that looks like a path — `/`, `./`, `../`, `~`, `runs/…` (FIRM's local run folders), a first component
  that exists here, a parent folder that exists, or more than two components — and does not exist is an `InputError`
  naming `what`, at once (never 30 s of Hugging Face retries and "check your internet connection");
- only what looks like a Hugging Face id (`org/name`) and is no local path is left for the hub;
- anything else (a bare name that is no local path) is an `InputError` too.
"""

from __future__ import annotations

import re
from pathlib import Path

from firm.errors import InputError

LOCAL_PREFIXES = ("/", "./", "../", "~", "runs/")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_hub_id(value: str) -> bool:
    """`org/name` (letters, digits, `-`, `_`, `.`), as Hugging Face model ids are written."""
    return bool(_HUB_ID.match(value)) and ".." not in value


def check_model_ref(value: str, what: str) -> str:
    """`value` unchanged when it is a URI, an existing local path or a Hugging Face id (see the module docstring);
    an `InputError` naming `what` when it is a local path that does not exist."""
    v = str(value).strip()
    if not v:
        raise InputError(f"{what}: empty model reference")
    if "://" in v:
        return value
    path = Path(v).expanduser()
    if path.exists():
        return value
    parts = Path(v).parts
    looks_local = (
        v.startswith(LOCAL_PREFIXES)
        or (len(parts) > 1 and (Path(parts[0]).expanduser().is_dir() or path.parent.is_dir()))
        or len(parts) > 2
    )
    if looks_local or not looks_like_hub_id(v):
        raise InputError(
            f"{what}={value}: no such directory"
            + ("" if looks_local else " (and not a Hugging Face id of the form org/name)")
        )
    return value
