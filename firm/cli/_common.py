"""Helpers shared by `firmctl` subcommands: one-line errors and JSON output."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from firm.errors import FirmError

F = TypeVar("F", bound=Callable[..., Any])


def one_line(text: object) -> str:
    """Collapse a (library) message that spans several lines into one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def cli_errors(fn: F) -> F:
    """Turn FIRM and validation errors into one `error: ...` line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FirmError as exc:
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(1) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            msg = one_line(first.get("msg"))
            typer.echo(f"error: invalid input{f' at {loc}' if loc else ''}: {msg}", err=True)
            raise typer.Exit(1) from None
        except FileNotFoundError as exc:
            typer.echo(f"error: no such file: {exc.filename or exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def echo_json(obj: Any) -> None:
    """Print a record or plain object as one JSON document on stdout."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    elif isinstance(obj, list):
        obj = [o.model_dump(mode="json") if isinstance(o, BaseModel) else o for o in obj]
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def library_output_to_stderr() -> Iterator[None]:
    """Keep stdout for the command's JSON: library chatter (DeepSpeed's accelerator logger, imported by
    transformers, prints to stdout) goes to stderr, transformers' weight-loading progress bars are off, and
    transformers/huggingface_hub log only errors."""
    with contextlib.redirect_stdout(sys.stderr):
        from huggingface_hub.utils import logging as hub_logging
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        hub_logging.set_verbosity_error()  # e.g. its "thrown while requesting HEAD" warnings when offline
        yield
