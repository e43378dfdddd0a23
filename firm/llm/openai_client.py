"""The one OpenAI-compatible `/v1/chat/completions` client of FIRM (vLLM, SGLang, a commercial API).

Used by the FIRM-Bench endpoint backend (`firm.bench.backends.OpenAICompatibleBackend`) and the curation teachers
(`firm.curation.teachers.HTTPTeacher`). What it does:

- configuration: base URL, model and key as arguments or from `FIRM_OPENAI_BASE_URL`, `FIRM_OPENAI_MODEL`,
  `FIRM_OPENAI_API_KEY` (the key is read from the environment or passed in; it is never logged or shown in `repr`);
  `/v1` is appended to the base URL when missing;
- bounded concurrency, an optional rate limit (requests started per second), per-request timeouts; `session()` keeps
  one connection pool, concurrency bound and rate limit open on the running event loop for as many calls as its
  user makes (a whole curation run), `amap`/`map` open one per batch of calls;
- retries on connection errors, timeouts and HTTP 408/409/429/5xx with exponential backoff and jitter
  (`backoff_s · 2^(attempt-1)`, each delay scaled by a random factor in `[1 - jitter, 1]`); other HTTP errors
  (401, 404, ...) are not retried and are `fatal`: they mean the configuration is wrong, not the request;
- token accounting from the response's `usage` (prompt and completion tokens) and the time of each call;
- `finish_reason == "length"` is reported, so callers can tell a truncated answer from a bad one;
- token log-probabilities on request (`complete(..., top_logprobs=k)` sends `logprobs: true, top_logprobs: k`):
  `ChatResult.logprobs` holds each answer token with its top-k alternatives (None where the endpoint returned
  none). An endpoint that refuses the parameters (HTTP 400/422) is asked again without them, and not asked for
  them again by this client.

Images travel as `data:image/png;base64,...` URLs (`image_data_url`, encoded once per image object and remembered
while the image lives); `to_wire(messages)` turns FIRM's chat messages (`firm.critic.messages.build_messages`:
`{"type": "image", "image": PIL}` parts) into the wire format.
A failed call raises `ChatCallError` with a short `reason` (`timeout`, `connection`, `http_429`, `http_5xx`,
`http_<code>`, `bad_response`) that callers count.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import os
import random
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, Field

from firm.errors import ConfigError, FirmError

log = logging.getLogger("firm.llm")
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
Messages = list[dict[str, Any]]


class TokenLogprobs(BaseModel):
    """One answer token and the log-probabilities of the top-k tokens at its position (`{token text: logprob}`)."""

    token: str
    logprob: float
    top: dict[str, float] = Field(default_factory=dict)


class ChatResult(BaseModel):
    """One answered chat completion."""

    text: str
    logprobs: list[TokenLogprobs] | None = Field(
        default=None, description="the answer's tokens with their top-k log-probabilities, where requested"
    )
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    attempts: int = 1

    @property
    def truncated(self) -> bool:
        """The endpoint stopped the answer at max_tokens."""
        return self.finish_reason == "length"


def _token_logprobs(block: Any) -> list[TokenLogprobs] | None:
    """`choices[0].logprobs` (`{"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}`, as
    OpenAI and vLLM return it) as `TokenLogprobs`; None when absent or not in that shape."""
    content = block.get("content") if isinstance(block, dict) else None
    if not isinstance(content, list):
        return None
    out = []
    try:
        for t in content:
            top: dict[str, float] = {}
            for alt in t.get("top_logprobs") or []:
                tok, lp = str(alt["token"]), float(alt["logprob"])
                top[tok] = max(lp, top.get(tok, -math.inf))
            out.append(TokenLogprobs(token=str(t["token"]), logprob=float(t["logprob"]), top=top))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return out


class ChatCallError(FirmError):
    """A call that produced no answer: `reason` is a short countable label, `fatal` says retrying cannot help."""

    def __init__(self, message: str, reason: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.fatal = fatal


class ImageMemo:
    """A value computed once per live image object (PIL images are unhashable: keyed by `id`, with a weak
    reference that drops the entry when the image is freed, so an id reused later can never hit a stale value)."""

    def __init__(self) -> None:
        self._values: dict[int, tuple[weakref.ref[Any], str]] = {}

    def get(self, img: Any, compute: Any) -> str:
        key = id(img)
        hit = self._values.get(key)
        if hit is not None and hit[0]() is img:
            return hit[1]
        value = compute(img)
        try:
            ref = weakref.ref(img, lambda r, k=key: self._drop(k, r))
        except TypeError:  # not weak-referenceable: not remembered
            return value
        self._values[key] = (ref, value)
        return value

    def _drop(self, key: int, ref: weakref.ref[Any]) -> None:
        hit = self._values.get(key)
        if hit is not None and hit[0] is ref:
            del self._values[key]


def _png_data_url(img: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_DATA_URLS = ImageMemo()


def image_data_url(img: Any) -> str:
    """A PIL image as a `data:image/png;base64,...` URL (lossless, as OpenAI-compatible servers accept).

    Encoded once per image object: the URL is remembered while the image lives (an edit pair's two images are
    sent in three requests; callers must not draw on an image after sending it — FIRM's loaded images are
    read-only)."""
    return _DATA_URLS.get(img, _png_data_url)


def to_wire(messages: Messages) -> Messages:
    """FIRM chat messages (image parts hold PIL images) → OpenAI chat messages (image parts are data URLs)."""
    wire: Messages = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            wire.append({"role": m["role"], "content": content})
            continue
        parts = []
        for part in content:
            if part["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": image_data_url(part["image"])}})
            else:
                parts.append({"type": "text", "text": part["text"]})
        wire.append({"role": m["role"], "content": parts})
    return wire


def normalize_base_url(base: str) -> str:
    url = base.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class _RateLimiter:
    """Spaces request starts at least `1/rps` seconds apart (shared by the calls of one batch)."""

    def __init__(self, rps: float) -> None:
        self.interval = 1.0 / rps
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


POOL_CONNECTIONS = 8


class _Pools:
    """Keep-alive connections spread over several httpx clients of at most `POOL_CONNECTIONS` connections each;
    a request goes to the least busy one. httpcore's pool does work proportional to its connection count on every
    request event (measured here: ~1.3 ms of client CPU per request at 32-64 connections in one pool, and
    throughput collapsing at 64; ~1 ms flat with pools of 8)."""

    def __init__(self, connections: int, timeout_s: float) -> None:
        import httpx

        n = -(-connections // POOL_CONNECTIONS)
        size = -(-connections // n)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._clients = [httpx.AsyncClient(timeout=timeout_s, limits=limits) for _ in range(n)]
        self._busy = [0] * n

    async def post(self, url: str, **kwargs: Any) -> Any:
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            return await self._clients[i].post(url, **kwargs)
        finally:
            self._busy[i] -= 1

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()


class ChatSession:
    """Open keep-alive connections with the client's concurrency bound and rate limit, on the running event loop
    (`OpenAIChatClient.session()`): every `complete` shares them, so connections are reused across calls."""

    def __init__(self, client: OpenAIChatClient, http: Any, sem: asyncio.Semaphore, limiter: Any) -> None:
        self.client, self._http, self._sem, self._limiter = client, http, sem, limiter

    async def complete(
        self, messages: Messages, max_tokens: int, *, top_logprobs: int | None = None
    ) -> ChatResult:
        """One completion of wire-format `messages`; raises `ChatCallError` when no answer came. `top_logprobs`
        asks for the answer tokens' top-k log-probabilities (`ChatResult.logprobs`)."""
        return await self.client.acomplete(
            self._http, self._sem, messages, max_tokens, self._limiter, top_logprobs=top_logprobs
        )


class OpenAIChatClient:
    """An OpenAI-compatible chat-completions endpoint (see the module docstring)."""

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        jitter: float = 0.5,
        timeout_s: float = 120.0,
        rate_limit_rps: float | None = None,
        temperature: float = 0.0,
        label: str = "critic",
    ) -> None:
        """`label` names the endpoint in errors ("critic endpoint URL: ...", "teacher endpoint URL: ...")."""
        self.label = label
        base = base_url or os.environ.get("FIRM_OPENAI_BASE_URL")
        if not base:
            raise ConfigError(
                f"OpenAI-compatible {label}: no base URL (pass one or set FIRM_OPENAI_BASE_URL)"
            )
        if not base.startswith(("http://", "https://")):
            raise ConfigError(
                f"OpenAI-compatible {label}: base URL {base!r} must start with http:// or https://"
            )
        self.base_url = normalize_base_url(base)
        self.model = model or os.environ.get("FIRM_OPENAI_MODEL") or ""
        if not self.model:
            raise ConfigError(
                f"OpenAI-compatible {label}: no model name (pass --model or set FIRM_OPENAI_MODEL)"
            )
        self._api_key = api_key if api_key is not None else os.environ.get("FIRM_OPENAI_API_KEY")
        if concurrency < 1 or max_retries < 0:
            raise ConfigError(f"OpenAI-compatible {label}: concurrency must be >= 1 and max_retries >= 0")
        if not 0 <= jitter <= 1 or backoff_s < 0 or timeout_s <= 0:
            raise ConfigError(
                f"OpenAI-compatible {label}: jitter must be in [0, 1], backoff_s >= 0 and timeout_s > 0"
            )
        if rate_limit_rps is not None and rate_limit_rps <= 0:
            raise ConfigError(f"OpenAI-compatible {label}: rate_limit_rps must be > 0")
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        self.jitter, self.timeout_s, self.rate_limit_rps = jitter, timeout_s, rate_limit_rps
        self.temperature = temperature
        self._rng = random.Random()
        # accounting (including retries); plain counters: all calls run on one event loop
        self.requests_sent = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.logprobs_refused = False  # the endpoint answered 400/422 to `logprobs`: not asked for them again

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIChatClient(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _delay(self, attempt: int) -> float:
        base = self.backoff_s * 2 ** (attempt - 1)
        return base * (1 - self.jitter * self._rng.random())

    async def acomplete(
        self,
        http: Any,
        sem: asyncio.Semaphore,
        messages: Messages,
        max_tokens: int,
        limiter: _RateLimiter | None = None,
        *,
        top_logprobs: int | None = None,
    ) -> ChatResult:
        """One completion of wire-format `messages` (see `to_wire`) through the shared `http` client."""
        import httpx

        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        }
        if top_logprobs and not self.logprobs_refused:
            payload.update(logprobs=True, top_logprobs=int(top_logprobs))
        url = self.url
        last, reason = "", "connection"
        t0 = time.monotonic()
        attempt, again_now = 0, False
        while attempt <= self.max_retries or again_now:
            if attempt and not again_now:
                await asyncio.sleep(self._delay(attempt))
            if not again_now:
                attempt += 1
            again_now = False
            async with sem:
                if limiter is not None:
                    await limiter.wait()
                self.requests_sent += 1
                try:
                    resp = await http.post(url, json=payload, headers=self._headers())
                except httpx.TimeoutException as exc:
                    last, reason = f"{type(exc).__name__}: {exc}", "timeout"
                    continue
                except httpx.TransportError as exc:
                    last, reason = f"{type(exc).__name__}: {exc}", "connection"
                    continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                reason = "http_5xx" if resp.status_code >= 500 else f"http_{resp.status_code}"
                continue
            if resp.status_code in (400, 422) and "logprobs" in payload:
                # an endpoint without log-probabilities: asked again at once without them (the answer counts,
                # with no confidence), and never asked for them again by this client
                if not self.logprobs_refused:
                    log.warning("%s endpoint %s refused logprobs (HTTP %d): its answers carry no confidence",
                                self.label, url, resp.status_code)  # fmt: skip
                self.logprobs_refused = True
                payload = {k: v for k, v in payload.items() if k not in ("logprobs", "top_logprobs")}
                again_now = True
                continue
            if resp.status_code != 200:
                raise ChatCallError(
                    f"{self.label} endpoint {url}: HTTP {resp.status_code}: {resp.text[:300]}",
                    f"http_{resp.status_code}",
                    fatal=True,
                )
            return self._result(resp, url, time.monotonic() - t0, attempt)
        # nothing answered at all (not an HTTP error status): most likely nothing is listening there
        hint = "" if last.startswith("HTTP") else f"; is the {self.label} service running at {self.base_url}?"
        raise ChatCallError(
            f"{self.label} endpoint {url}: gave up after {self.max_retries + 1} attempts ({last}){hint}",
            reason,
        )

    def _result(self, resp: Any, url: str, seconds: float, attempts: int) -> ChatResult:
        try:
            body = resp.json()
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ChatCallError(
                f"{self.label} endpoint {url}: not a chat-completions response: {resp.text[:300]}",
                "bad_response",
            ) from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        usage = body.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.prompt_tokens += pt
        self.completion_tokens += ct
        return ChatResult(
            text=str(content or ""),
            logprobs=_token_logprobs(choice.get("logprobs")),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=pt,
            completion_tokens=ct,
            seconds=seconds,
            attempts=attempts,
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[ChatSession]:
        """A `ChatSession` on the running event loop: at most `concurrency` keep-alive connections (in pools of
        `POOL_CONNECTIONS`), one concurrency bound and one rate limiter for every call made through it."""
        sem = asyncio.Semaphore(self.concurrency)
        limiter = _RateLimiter(self.rate_limit_rps) if self.rate_limit_rps else None
        pools = _Pools(self.concurrency, self.timeout_s)
        try:
            yield ChatSession(self, pools, sem, limiter)
        finally:
            await pools.aclose()

    async def amap(
        self, jobs: Sequence[tuple[Messages, int]], *, return_errors: bool = False
    ) -> list[ChatResult | ChatCallError]:
        """Complete every (wire messages, max_tokens[, top_logprobs]) job, at most `concurrency` at a time, in order.

        `return_errors=False` raises the first failure; True puts each `ChatCallError` in its job's place (a fatal
        one — a wrong key, an unknown model — is still raised)."""
        async with self.session() as s:
            results = await asyncio.gather(
                *(s.complete(j[0], j[1], top_logprobs=j[2] if len(j) > 2 else None) for j in jobs),  # type: ignore[misc]
                return_exceptions=True,
            )
        out: list[ChatResult | ChatCallError] = []
        for r in results:
            if isinstance(r, ChatCallError):
                if r.fatal or not return_errors:
                    raise r
                out.append(r)
            elif isinstance(r, BaseException):
                raise r
            else:
                out.append(r)
        return out

    def map(
        self, jobs: Sequence[tuple[Messages, int]], *, return_errors: bool = False
    ) -> list[ChatResult | ChatCallError]:
        """`amap` from synchronous code."""
        return asyncio.run(self.amap(jobs, return_errors=return_errors))

    def check_reachable(self, timeout_s: float = 10.0) -> None:
        """Fail fast, in one line naming the URL, when nothing answers at the base URL (`GET /v1/models`; any HTTP
        answer counts as reachable: some endpoints do not serve the model list)."""
        import httpx

        try:
            httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise FirmError(
                f"{self.label} endpoint {self.base_url} is unreachable ({type(exc).__name__}: {exc})"
            ) from None
