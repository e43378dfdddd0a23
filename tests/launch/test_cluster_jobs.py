"""The log reading and name rules both cluster backends share (`firm.launch.cluster_jobs`). The backends' own tests
drive them through the fake API server; these pin what that server cannot show: a followed log's connection is given
back to the client's pool however the reading ends, and lines split across chunks come out whole."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firm.launch.backend import JobError
from firm.launch.cluster_jobs import pod_log_lines, refuse_unless_failed, replace_failed, wait_until_gone


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.released = chunks, 0

    def stream(self, _size: int) -> Iterator[bytes]:
        yield from self.chunks

    def release_conn(self) -> None:
        self.released += 1


class _Core:
    def __init__(self, resp: _Response) -> None:
        self.resp = resp

    def read_namespaced_pod_log(self, **kw: object) -> object:
        return self.resp if kw.get("follow") else b"".join(self.resp.chunks).decode()


def test_a_followed_log_comes_out_in_whole_lines_and_gives_its_connection_back() -> None:
    resp = _Response(
        [b"rank 0 st", b"arted\nstep 1 ", "lo\u00df".encode()[:-1], "lo\u00df".encode()[-1:] + b"\ntail"]
    )
    assert list(pod_log_lines(_Core(resp), "p", "ns", "c", follow=True)) == [
        "rank 0 started",
        "step 1 loß",
        "tail",
    ]
    assert resp.released == 1
    # a reader that stops after the first line (the CLI's `logs --follow` interrupted) gives it back too
    resp = _Response([b"a\nb\nc\n"])
    lines = pod_log_lines(_Core(resp), "p", "ns", "c", follow=True)
    assert next(lines) == "a"
    lines.close()
    assert resp.released == 1
    assert list(pod_log_lines(_Core(_Response([b"x\ny"])), "p", "ns", "c", follow=False)) == ["x", "y"]


def test_a_taken_name_is_refused_unless_its_job_failed() -> None:
    with pytest.raises(JobError, match="TrainJob ns/j already finished successfully"):
        refuse_unless_failed("TrainJob", "ns", "j", "Succeeded")
    with pytest.raises(JobError, match=r"PyTorchJob ns/j already exists \(Running\)"):
        refuse_unless_failed("PyTorchJob", "ns", "j", "Running")
    refuse_unless_failed("PyTorchJob", "ns", "j", "Failed")  # may be replaced


def test_waiting_for_a_deleted_job() -> None:
    calls: list[int] = []

    def get() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("404")

    wait_until_gone(get, lambda exc: isinstance(exc, KeyError), "TrainJob ns/j")
    assert len(calls) == 2
    with pytest.raises(ValueError):  # another error is not "gone"
        wait_until_gone(lambda: (_ for _ in ()).throw(ValueError("500")), lambda exc: False, "x")
    with pytest.raises(JobError, match="has not disappeared after 0 s"):
        wait_until_gone(lambda: None, lambda exc: True, "TrainJob ns/j", timeout=0)


def test_a_failed_job_is_deleted_and_awaited_and_a_live_one_is_never_touched() -> None:
    """`replace_failed`, what both cluster backends run on a taken name: nothing is deleted unless the job failed;
    a failed one is deleted, then awaited until gone; another API error while waiting is the backend's own error."""
    events: list[str] = []

    def get() -> None:
        events.append("get")
        if events.count("get") == 2:
            raise KeyError("404")

    def run(phase: str, get=get, error=lambda exc: JobError(f"api: {exc}")) -> None:  # type: ignore[no-untyped-def]
        replace_failed(
            "TrainJob", "ns", "j", phase, delete=lambda: events.append("delete"), get=get,
            gone=lambda exc: isinstance(exc, KeyError), error=error,
        )  # fmt: skip

    with pytest.raises(JobError, match="already exists"):
        run("Running")
    assert events == []
    run("Failed")
    assert events == ["delete", "get", "get"]

    def broken() -> None:
        raise ValueError("500 Internal Server Error")

    with pytest.raises(JobError, match=r"^api: 500 Internal Server Error$"):
        run("Failed", get=broken)
