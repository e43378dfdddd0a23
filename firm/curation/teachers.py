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
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from firm.errors import FirmError

Messages = list[dict[str, Any]]


class TeacherRequest(BaseModel):
    """One prompt: FIRM chat messages (image parts hold PIL images) and the answer budget."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    messages: Messages
    max_tokens: int = Field(ge=1)


class TeacherAnswer(BaseModel):
    """One teacher answer, or why there is none (`error`)."""

    text: str = ""
    error: str | None = None
    truncated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cached: bool = False

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


def image_digest(img: Any) -> str:
    """sha256 of an image's pixels, mode and size (independent of how it was encoded on disk)."""
    h = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


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

    def check(self) -> None:
        """Fail in one line naming the URL when nothing answers there."""
        self.client.check_reachable()

    def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]:
        from firm.llm.openai_client import ChatCallError, to_wire

        if not requests:
            return []
        jobs = [(to_wire(r.messages), r.max_tokens) for r in requests]
        out: list[TeacherAnswer] = []
        for res in self.client.map(jobs, return_errors=True):
            if isinstance(res, ChatCallError):
                out.append(TeacherAnswer(error=res.reason))
            else:
                out.append(
                    TeacherAnswer(
                        text=res.text,
                        truncated=res.truncated,
                        prompt_tokens=res.prompt_tokens,
                        completion_tokens=res.completion_tokens,
                        seconds=res.seconds,
                    )
                )
        return out

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------------ local
class LocalTeacher:
    """A local VLM (any `firm.critic.Critic`-loadable checkpoint) answering free-form prompts, greedily, in batches."""

    def __init__(self, critic: Any, *, batch_size: int = 8, name: str | None = None) -> None:
        self.critic = critic
        self.batch_size = batch_size
        self.model_id = name or critic.name
        self.name = self.model_id

    def check(self) -> None:
        return None

    def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]:
        from firm.critic.images import fit_pixels
        from firm.critic.messages import message_images, render_prompt

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
            try:
                data = self._store.get_bytes(self._key(key))
                out.append(TeacherAnswer.model_validate_json(data).model_copy(update={"cached": True}))
                self.hits += 1
            except (FirmError, ValueError):  # a miss (or an unreadable entry: asked again)
                out.append(None)
                todo.append(i)
        if todo:
            self.misses += len(todo)
            fresh = self.inner.generate([requests[i] for i in todo])
            for i, ans in zip(todo, fresh, strict=True):
                out[i] = ans
                if ans.ok:
                    self._store.put_bytes(self._key(keys[i]), ans.model_dump_json().encode("utf-8"))
        return [a for a in out if a is not None]

    def close(self) -> None:
        self.inner.close()


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

    critic = Critic.from_pretrained(s, device=device)
    return LocalTeacher(critic, batch_size=batch_size, name=model or s)
