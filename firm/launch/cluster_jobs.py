"""What the two cluster backends (`PyTorchJobBackend`, `TrainJobBackend`) share: the rule for a job name that is
taken (`replace_failed`: refuse, or delete a failed job and wait until it is gone), and reading a pod's log (whole,
or followed line by line)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from firm.launch.backend import JobError

RECREATE_TIMEOUT_S = 120.0


def refuse_unless_failed(kind: str, namespace: str, name: str, phase: str) -> None:
    """A job of this name exists: a finished one is never overwritten, a live one is followed or cancelled; only a
    failed one may be replaced (the caller deletes it, then creates it again)."""
    if phase == "Succeeded":
        raise JobError(
            f"{kind} {namespace}/{name} already finished successfully; a finished run is never overwritten — "
            "give the job a new name (name=...) to train again"
        )
    if phase != "Failed":
        raise JobError(
            f"{kind} {namespace}/{name} already exists ({phase}); follow it with "
            f"'firmctl job logs {name} --follow' or stop it with 'firmctl job cancel {name}'"
        )


def wait_until_gone(
    get: Callable[[], Any], gone: Callable[[Exception], bool], what: str, timeout: float = RECREATE_TIMEOUT_S
) -> None:
    """Poll `get` until it raises an exception `gone` accepts (a 404); any other exception propagates."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get()
        except Exception as exc:
            if gone(exc):
                return
            raise
        time.sleep(1.0)
    raise JobError(
        f"{what} (failed) was deleted but has not disappeared after {timeout:g} s; submit again later"
    )


def replace_failed(
    kind: str, namespace: str, name: str, phase: str, *, delete: Callable[[], None], get: Callable[[], Any],
    gone: Callable[[Exception], bool], error: Callable[[Exception], JobError],
) -> None:  # fmt: skip
    """A job of this name exists (in `phase`): refuse unless it failed (`refuse_unless_failed`); a failed one is
    deleted and waited for until `get` raises what `gone` accepts, so it can be created again. Another API error while
    waiting becomes `error(exc)` (the backend's own wording)."""
    refuse_unless_failed(kind, namespace, name, phase)
    delete()
    try:
        wait_until_gone(get, gone, f"{kind} {namespace}/{name}")
    except JobError:
        raise
    except Exception as exc:
        raise error(exc) from None


def pod_log_lines(core: Any, pod: str, namespace: str, container: str, follow: bool) -> Iterator[str]:
    """The container's log as lines; with `follow`, streamed until the container ends. The streamed response's
    connection goes back to the client's pool however the reading ends (a consumer that stops early included)."""
    if not follow:
        text = core.read_namespaced_pod_log(name=pod, namespace=namespace, container=container)
        yield from str(text).splitlines()
        return
    resp = core.read_namespaced_pod_log(
        name=pod, namespace=namespace, container=container, follow=True, _preload_content=False
    )
    try:
        buf = b""
        for chunk in resp.stream(4096):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                yield ln.decode(errors="replace")
        if buf:
            yield buf.decode(errors="replace")
    finally:
        resp.release_conn()
