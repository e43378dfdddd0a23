"""Teachers: the models curation asks for difference reports, plans, rewrites and scores — behind one interface.

`Teacher.generate(requests) -> answers` takes FIRM chat messages (`firm.critic.messages.build_messages`, or
`firm.curation.prompts.CurationPrompt.messages`) with a token budget each and returns one `TeacherAnswer` per request,
in order. A failed call is an answer with `error` set to a countable reason (`timeout`, `connection`, `http_429`,
`http_5xx`, ...), never an exception — except a fatal endpoint error (wrong key, unknown model), which stops the run.

- `HTTPTeacher`: an OpenAI-compatible endpoint (vLLM, SGLang, a commercial API) through FIRM's one chat client,
  `firm.llm.openai_client.OpenAIChatClient` (bounded concurrency, retries with backoff and jitter, timeouts, a rate
  limit, token accounting). Base URL, model and key from arguments or `FIRM_OPENAI_*` env.
- `LocalTeacher`: a local transformers VLM through `firm.critic.Critic` (`Critic.from_pretrained`, greedy, batched).
- `CachedTeacher`: wraps either; answers are stored in the object store under
  `<cache>/<key[:2]>/<key>.json`, key = sha256 of (model, the rendered messages with every image replaced by the
  sha256 of its pixels, max_tokens). A rerun after a crash pays for nothing twice; failed calls are not cached.

`make_teacher(spec, ...)`: `http(s)://host:port[/v1]` or `openai://host:port` → `HTTPTeacher`; anything else → a local
model (HF id, path, or `file://` / `s3://` URI) → `LocalTeacher`.

Inside a curation run every item walks its own stages, and a teacher is asked one request at a time from many items
at once: `open_teacher(teacher)` gives an `AsyncTeacher` (`await ask(request) -> answer`) on the running event loop.
`HTTPTeacher` answers through one open `ChatSession` (one connection pool and concurrency bound for the whole run);
a teacher with only `generate` (`LocalTeacher`, any other) is asked in batches: the requests that wait at the same
time are answered by one `generate` call in a worker thread, up to `batch_size` at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from firm.errors import FirmError
from firm.llm.openai_client import ImageMemo, TokenLogprobs

Messages = list[dict[str, Any]]


class TeacherRequest(BaseModel):
    """One prompt: FIRM chat messages (image parts hold PIL images) and the answer budget."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    messages: Messages
    max_tokens: int = Field(ge=1)
    top_logprobs: int | None = Field(
        default=None, ge=1, le=20, description="ask for the answer tokens' top-k log-probabilities (scoring)"
    )


class TeacherAnswer(BaseModel):
    """One teacher answer, or why there is none (`error`)."""

    text: str = ""
    error: str | None = None
    truncated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cached: bool = False
    logprobs: list[TokenLogprobs] | None = Field(
        default=None, description="answer tokens with their top-k log-probabilities (where given)"
    )

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Teacher(Protocol):
    """Answers prompts; `model_id` names the model in cache keys, `name` in outputs."""

    name: str
    model_id: str

    def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]: ...

    def close(self) -> None: ...


class AsyncTeacher(Protocol):
    """A teacher on the running event loop (`open_teacher`): one request at a time, many in flight."""

    async def ask(self, request: TeacherRequest) -> TeacherAnswer: ...


def _pixel_digest(img: Any) -> str:
    h = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


_DIGESTS = ImageMemo()


def image_digest(img: Any) -> str:
    """sha256 of an image's pixels, mode and size (independent of how it was encoded on disk); computed once per
    image object and remembered while it lives."""
    return _DIGESTS.get(img, _pixel_digest)


def cache_key(model_id: str, messages: Messages, max_tokens: int) -> str:
    """The cache key of one call: the model, the rendered messages (images as pixel digests) and the budget."""
    canon = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            canon.append({"role": m["role"], "content": content})
            continue
        parts = [
            {"image_sha256": image_digest(p["image"])} if p["type"] == "image" else {"text": p["text"]}
            for p in content
        ]
        canon.append({"role": m["role"], "content": parts})
    blob = json.dumps({"model": model_id, "messages": canon, "max_tokens": max_tokens}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------------ HTTP
class HTTPTeacher:
    """A teacher behind an OpenAI-compatible chat endpoint."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.model_id = client.model
        self.name = f"{client.model} @ {client.base_url}"
        self.concurrency = client.concurrency  # requests in flight at most

    def check(self) -> None:
        """Fail in one line naming the URL when nothing answers there."""
        self.client.check_reachable()

    @staticmethod
    def _answer(res: Any) -> TeacherAnswer:
        from firm.llm.openai_client import ChatCallError

        if isinstance(res, ChatCallError):
            return TeacherAnswer(error=res.reason)
        return TeacherAnswer(
            text=res.text,
            truncated=res.truncated,
            prompt_tokens=res.prompt_tokens,
            completion_tokens=res.completion_tokens,
            seconds=res.seconds,
            logprobs=res.logprobs,
        )

    def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]:
        from firm.llm.openai_client import to_wire

        if not requests:
            return []
        jobs = [(to_wire(r.messages), r.max_tokens, r.top_logprobs) for r in requests]
        return [self._answer(res) for res in self.client.map(jobs, return_errors=True)]

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncTeacher]:
        """One open `ChatSession` for every request of a run (see the module docstring)."""
        async with self.client.session() as chat:
            yield _HTTPAsk(chat, self._answer)

    def close(self) -> None:
        return None


class _HTTPAsk:
    def __init__(self, chat: Any, answer: Any) -> None:
        self._chat, self._answer = chat, answer

    async def ask(self, request: TeacherRequest) -> TeacherAnswer:
        from firm.llm.openai_client import ChatCallError, to_wire

        try:
            res = await self._chat.complete(
                to_wire(request.messages), request.max_tokens, top_logprobs=request.top_logprobs
            )
        except ChatCallError as exc:
            if exc.fatal:  # a wrong key or an unknown model: the run stops
                raise
            return self._answer(exc)
        return self._answer(res)


class _Batched:
    """`ask` for a teacher with only `generate`: the requests waiting together go to one `generate` call, in a
    worker thread (so the event loop keeps the other items moving), at most `batch_size` at a time."""

    def __init__(self, teacher: Teacher, batch_size: int) -> None:
        self.teacher, self.batch_size = teacher, max(1, batch_size)
        self._queue: list[tuple[TeacherRequest, asyncio.Future[TeacherAnswer]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def ask(self, request: TeacherRequest) -> TeacherAnswer:
        fut: asyncio.Future[TeacherAnswer] = asyncio.get_running_loop().create_future()
        self._queue.append((request, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # the items made ready by the same event get to queue their requests too
            batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
            try:
                answers = await asyncio.to_thread(self.teacher.generate, [r for r, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch:
                    fut.cancel()
                raise
            except Exception as exc:  # a fatal teacher error reaches every item of the batch
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), ans in zip(batch, answers, strict=True):
                if not fut.done():
                    fut.set_result(ans)

    async def aclose(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with suppress(asyncio.CancelledError):
                await self._worker


@asynccontextmanager
async def _batched(teacher: Teacher) -> AsyncIterator[AsyncTeacher]:
    b = _Batched(teacher, int(getattr(teacher, "batch_size", 8) or 8))
    try:
        yield b
    finally:
        await b.aclose()


def open_teacher(teacher: Teacher) -> AbstractAsyncContextManager[AsyncTeacher]:
    """`teacher` on the running event loop (see the module docstring): `async with open_teacher(t) as a:
    answer = await a.ask(request)`."""
    session = getattr(teacher, "session", None)
    return session() if callable(session) else _batched(teacher)


@asynccontextmanager
async def open_teachers(first: Teacher, second: Teacher) -> AsyncIterator[tuple[AsyncTeacher, AsyncTeacher]]:
    """Two stages' teachers on the running event loop; the same teacher object for both gets one session."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_teacher(first))
        b = a if second is first else await stack.enter_async_context(open_teacher(second))
        yield a, b


# ------------------------------------------------------------------------------------------------------ local
class LocalTeacher:
    """A local VLM (any `firm.critic.Critic`-loadable checkpoint) answering free-form prompts, greedily, in batches."""

    def __init__(self, critic: Any, *, batch_size: int = 8, name: str | None = None) -> None:
        self.critic = critic
        self.batch_size = self.concurrency = batch_size
        self.model_id = name or critic.name
        self.name = self.model_id

    def check(self) -> None:
        return None

    def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]:
        from firm.critic.messages import message_images, render_prompt
        from firm.images import fit_pixels

        c = self.critic
        out: list[TeacherAnswer | None] = [None] * len(requests)
        # one generate call per (text-only or not, budget) group and batch
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((bool(message_images(r.messages)), r.max_tokens), []).append(i)
        for (has_images, budget), idx in groups.items():
            for k in range(0, len(idx), self.batch_size):
                batch = idx[k : k + self.batch_size]
                prompts = [render_prompt(c.processor, requests[i].messages) for i in batch]
                images = [
                    fit_pixels(im, c.max_pixels, c.factor)
                    for i in batch
                    for im in message_images(requests[i].messages)
                ]
                t0 = time.monotonic()
                texts = c.generate_texts(prompts, images if has_images else None, max_new_tokens=budget)
                dt = (time.monotonic() - t0) / len(batch)
                for i, p, t in zip(batch, prompts, texts, strict=True):
                    n_out = len(c.tokenizer(t, add_special_tokens=False)["input_ids"])
                    n_in = len(c.tokenizer(p, add_special_tokens=False)["input_ids"])
                    out[i] = TeacherAnswer(
                        text=t,
                        truncated=n_out >= budget,
                        prompt_tokens=n_in,
                        completion_tokens=n_out,
                        seconds=dt,
                    )
        return [a for a in out if a is not None]

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------------ cache
class CachedTeacher:
    """Answers from the object store when this exact call was answered before; the inner teacher otherwise."""

    def __init__(self, inner: Teacher, cache_uri: str) -> None:
        from firm.storage import open_store

        self.inner = inner
        self.model_id, self.name = inner.model_id, inner.name
        self.concurrency = getattr(inner, "concurrency", None)
        self.cache_uri = cache_uri.rstrip("/")
        self._store, prefix = open_store(self.cache_uri + "/")
        self._prefix = prefix.rstrip("/")
        self.hits = 0
        self.misses = 0

    def check(self) -> None:
        check = getattr(self.inner, "check", None)
        if callable(check):
            check()

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key[:2]}/{key}.json" if self._prefix else f"{key[:2]}/{key}.json"

    def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]:
        keys = [cache_key(self.model_id, r.messages, r.max_tokens) for r in requests]
        out: list[TeacherAnswer | None] = []
        todo: list[int] = []
        for i, key in enumerate(keys):
            hit = self.lookup(key)
            out.append(hit)
            if hit is None:
                todo.append(i)
            else:
                self.hits += 1
        if todo:
            self.misses += len(todo)
            fresh = self.inner.generate([requests[i] for i in todo])
            for i, ans in zip(todo, fresh, strict=True):
                out[i] = ans
                if ans.ok:
                    self.store(keys[i], ans)
        return [a for a in out if a is not None]

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncTeacher]:
        """Cache lookups and stores in worker threads (an S3 round trip must not stall the other items), the inner
        teacher's own session for the misses."""
        async with open_teacher(self.inner) as inner:
            yield _CachedAsk(self, inner)

    def lookup(self, key: str) -> TeacherAnswer | None:
        try:
            data = self._store.get_bytes(self._key(key))
            return TeacherAnswer.model_validate_json(data).model_copy(update={"cached": True})
        except (FirmError, ValueError):  # a miss (or an unreadable entry: asked again)
            return None

    def store(self, key: str, ans: TeacherAnswer) -> None:
        self._store.put_bytes(self._key(key), ans.model_dump_json().encode("utf-8"))

    def close(self) -> None:
        self.inner.close()


class _CachedAsk:
    def __init__(self, cached: CachedTeacher, inner: AsyncTeacher) -> None:
        self._c, self._inner = cached, inner

    async def ask(self, request: TeacherRequest) -> TeacherAnswer:
        c = self._c
        key = cache_key(c.model_id, request.messages, request.max_tokens)
        hit = await asyncio.to_thread(c.lookup, key)
        if hit is not None:
            c.hits += 1
            return hit
        c.misses += 1
        ans = await self._inner.ask(request)
        if ans.ok:
            await asyncio.to_thread(c.store, key, ans)
        return ans


# ------------------------------------------------------------------------------------------------------ spec
def is_endpoint(spec: str) -> bool:
    return spec.startswith(("http://", "https://", "openai://", "openai+https://"))


def make_teacher(
    spec: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
    max_retries: int = 4,
    backoff_s: float = 0.5,
    timeout_s: float = 120.0,
    rate_limit_rps: float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> Teacher:
    """A teacher from a `--teacher/--planner/--scorer` value (see the module docstring)."""
    from firm.errors import InputError

    s = spec.strip()
    if not s:
        raise InputError("teacher: the spec must not be empty (an endpoint URL or a model path/id)")
    if is_endpoint(s):
        from firm.llm.openai_client import OpenAIChatClient

        if s.startswith("openai+https://"):
            s = "https://" + s[len("openai+https://") :]
        elif s.startswith("openai://"):
            s = "http://" + s[len("openai://") :]
        client = OpenAIChatClient(
            s, model, api_key=api_key, concurrency=concurrency, max_retries=max_retries, backoff_s=backoff_s,
            timeout_s=timeout_s, rate_limit_rps=rate_limit_rps, label="teacher",
        )  # fmt: skip
        return HTTPTeacher(client)
    from firm.critic import Critic
    from firm.storage.model_ref import check_model_ref

    check_model_ref(s, "teacher")

    critic = Critic.from_pretrained(s, device=device)
    return LocalTeacher(critic, batch_size=batch_size, name=model or s)
