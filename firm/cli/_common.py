"""Helpers shared by `firmctl` subcommands: one-line errors and JSON output.

Output contract: a command's result (its JSON document, its table) is the only thing on stdout; warnings,
progress and library chatter go to stderr. `cli_errors` enforces it for every command: while the command runs,
Python-level writes to stdout go to stderr, and `echo_json` / `echo_out` write the result to the real stdout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from firm.errors import FirmError

F = TypeVar("F", bound=Callable[..., Any])


def one_line(text: object) -> str:
    """Collapse a (library) message that spans several lines into one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


_RESULT_STREAMS: list[TextIO] = []  # the real stdout of each running command (innermost last)


def result_stream() -> TextIO:
    """Where a command's result goes: the stdout the command was started with (not the redirected one)."""
    return _RESULT_STREAMS[-1] if _RESULT_STREAMS else sys.stdout


def cli_errors(fn: F) -> F:
    """Turn FIRM and validation errors into one `error: ...` line on stderr and exit code 1 (no traceback), keep
    stdout for the command's result (see the module docstring) and quiet expected library chatter."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from firm.logs import quiet_libraries

        quiet_libraries()
        _RESULT_STREAMS.append(sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                check_environment()
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
        finally:
            _RESULT_STREAMS.pop()

    return wrapper  # type: ignore[return-value]


def check_environment() -> None:
    """Settings read from the environment outside `FirmSettings` are checked when a command starts: a value that
    does not parse is a `ConfigError` naming the variable, never silently replaced by a default."""
    from firm.errors import ConfigError
    from firm.progress import progress_interval

    try:
        progress_interval()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def torchrun_env() -> dict[str, str]:
    """Environment for local torchrun launches: torchrun's own log lines ("Sending process … closing signal
    SIGTERM" to the ranks that did not fail) repeat what the failing rank's `error:` line and the launcher's
    one-line summary already say, so torch.distributed logs errors only and torchrun's launcher logger is off —
    unless TORCH_LOGS / LOGLEVEL are set."""
    import os

    env = {"TORCH_LOGS": "-distributed", "LOGLEVEL": "CRITICAL"}
    return {k: v for k, v in env.items() if k not in os.environ}


def echo_json(obj: Any) -> None:
    """Print a record or plain object as one JSON document on stdout."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    elif isinstance(obj, list):
        obj = [o.model_dump(mode="json") if isinstance(o, BaseModel) else o for o in obj]
    echo_out(json.dumps(obj))


def echo_out(text: str) -> None:
    """Print one line of a command's result on (the real) stdout."""
    out = result_stream()
    out.write(text + "\n")
    out.flush()


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
