"""`firmctl storage`: Object store: list, copy, initialise buckets (file:// and s3://)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from firm.cli._common import cli_errors, echo_out

app = typer.Typer(
    help="Object store: list, copy, initialise buckets (file:// and s3://).", no_args_is_help=True
)


@contextmanager
def _byte_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Bytes, speed and ETA on stderr (a bar on a terminal, a line every FIRM_PROGRESS_INTERVAL seconds
    elsewhere); yields the callback that advances it (thread-safe: transfers run in parallel)."""
    from firm.progress import Progress

    with Progress(description, total=total or None, unit="B") as progress:
        yield progress.advance


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command("ls")
@cli_errors
def ls_cmd(
    uri: str = typer.Argument(..., help="file:///path, s3://bucket/prefix or a local path"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="list every object under the prefix"),
) -> None:
    """List objects (size and URI per line; `DIR` for sub-prefixes when not recursive)."""
    from firm.errors import StorageError
    from firm.storage import open_store
    from firm.storage.base import dir_prefix

    store, key = open_store(uri)
    if key and not key.endswith("/") and store.exists(key):
        info = store.stat(key)
        echo_out(f"{info.size:>12}  {store.uri(key)}")
        return
    found = False
    for obj in store.list(dir_prefix(key), recursive=recursive):
        found = True
        echo_out(
            f"{'DIR':>12}  {store.uri(obj.key)}" if obj.is_dir else f"{obj.size:>12}  {store.uri(obj.key)}"
        )
    if not found and key.strip("/"):
        raise StorageError(f"{uri}: no such object or prefix")


@app.command("cp")
@cli_errors
def cp_cmd(
    src: str = typer.Argument(..., help="source: local path, file:// or s3:// URI (object or prefix)"),
    dst: str = typer.Argument(..., help="destination: local path, file:// or s3:// URI"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing, non-empty destination"),
) -> None:
    """Copy an object, or recursively a directory/prefix (manifests last), with a progress bar. An existing
    destination object, or a non-empty destination prefix, is refused unless --overwrite (which removes it first)."""
    from firm.storage import copy, plan_copy
    from firm.storage.targets import check_target, clear_target

    plan = plan_copy(src, dst)
    target = plan.dst.uri(plan.items[0].dst_key) if len(plan.items) == 1 and plan.single else dst
    if check_target(target, "destination", overwrite=overwrite):
        clear_target(target)
    with _byte_progress(f"copying {len(plan.items)} file(s)", plan.total_bytes) as advance:
        copy(src, dst, on_bytes=advance, plan=plan)
    echo_out(f"copied {len(plan.items)} file(s), {_size(plan.total_bytes)}: {src} -> {dst}")


@app.command("init")
@cli_errors
def init_cmd() -> None:
    """Create the configured datasets/checkpoints/models buckets (idempotent)."""
    from firm.storage import init_buckets

    for uri, created in init_buckets():
        echo_out(f"{'created' if created else 'exists':<8} {uri}")


@app.command("publish")
@cli_errors
def publish_cmd(
    local_dir: str = typer.Argument(..., help="local directory to publish"),
    uri: str = typer.Argument(..., help="destination prefix (file:// or s3://)"),
    producer: str = typer.Option(None, "--producer", help="who made it (recorded in MANIFEST.json)"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace what is at URI (it is removed first; publications are immutable)"
    ),
) -> None:
    """Publish a directory atomically: every file, then MANIFEST.json (sizes, sha256) last. Publications are
    immutable: a URI that already holds anything is refused unless --overwrite, which removes it first."""
    from pathlib import Path

    from firm.errors import StorageError
    from firm.storage import publish_dir
    from firm.storage.targets import check_target, clear_target

    if not Path(local_dir).is_dir():
        raise StorageError(f"{local_dir}: not a local directory, nothing to publish")
    if check_target(uri, "publication", overwrite=overwrite):
        clear_target(uri)
    total = sum(p.stat().st_size for p in Path(local_dir).rglob("*") if p.is_file())
    with _byte_progress("publishing", total) as advance:
        manifest = publish_dir(local_dir, uri, producer=producer, on_bytes=advance)
    echo_out(f"published {len(manifest.files)} file(s), {_size(manifest.total_bytes)} at {uri}")


@app.command("fetch")
@cli_errors
def fetch_cmd(
    uri: str = typer.Argument(..., help="published directory (file:// or s3://)"),
    local_dir: str = typer.Argument(..., help="local destination directory"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace a non-empty LOCAL_DIR (swapped in once everything verified)"
    ),
) -> None:
    """Download a published directory, verifying every sha256 before anything lands in LOCAL_DIR. A non-empty
    LOCAL_DIR is refused unless --overwrite (then the verified copy replaces it in one swap, never merged)."""
    from firm.storage import fetch_dir, read_manifest
    from firm.storage.targets import check_target

    check_target(local_dir, "destination", overwrite=overwrite)
    manifest = read_manifest(uri)
    with _byte_progress("fetching", manifest.total_bytes) as advance:
        fetch_dir(uri, local_dir, on_bytes=advance, overwrite=overwrite)
    echo_out(f"fetched {len(manifest.files)} file(s), {_size(manifest.total_bytes)} into {local_dir}")


@app.command("latest")
@cli_errors
def latest_cmd(prefix: str = typer.Argument(..., help="prefix holding published directories")) -> None:
    """Print the newest complete publication under PREFIX (e.g. the last complete checkpoint)."""
    from firm.errors import StorageError
    from firm.storage import latest

    found = latest(prefix)
    if found is None:
        raise StorageError(f"{prefix}: no published directory (with MANIFEST.json) under this prefix")
    echo_out(found)
