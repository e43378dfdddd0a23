"""`RewardClient`: FIRM's reward service client (Triton KServe-v2 gRPC), fit for the RL hot path.

    client = RewardClient(["10.0.0.5:8001", "10.0.0.6:8001"], max_batch=16, max_in_flight=32)
    rewards = client.score_edit([(source, edited, "make the sky purple"), ...])      # list[RewardBreakdown]
    rewards = await client.ascore_gen([(image, "a red cube on a blue sphere"), ...])  # async twin

- items are split into requests of at most `max_batch` rows; up to `max_in_flight` requests run concurrently;
- each request goes to the healthy endpoint with the fewest requests in flight (least-loaded routing);
- UNAVAILABLE / connection failures / timeouts mark the endpoint down for `cooldown` seconds and the request is
  retried on another endpoint with exponential backoff (`retries` attempts in all); INVALID_ARGUMENT is the caller's
  fault and raises `InputError` at once;
- every request has a deadline (`timeout` seconds);
- images (PIL, torch tensors, numpy arrays, paths/URIs, bytes) are encoded to PNG or JPEG on the client;
- results are `firm.schemas.RewardBreakdown` records in input order: `reward` is None with a `status` naming the
  axis when the critic's answer did not parse — never a fabricated 0;
- each breakdown's `confidence` comes from the service's `confidence` output (`[p, entropy, std]`, NaN → None:
  the answer did not parse); a service exported before that output existed answers without it (None).

The sync methods run the async implementation on a private event-loop thread, so they also work from code that
already runs an event loop (e.g. a trainer with its own asyncio rollout loop).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Awaitable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from firm.errors import FirmError, InputError
from firm.schemas import Confidence, RewardBreakdown
from firm.serving.encoding import ImageFormat, encode_image
from firm.serving.spec import CONFIDENCE_OUTPUT, EDIT_REWARD_MODEL, GEN_REWARD_MODEL

T = TypeVar("T")


class RewardServiceError(FirmError):
    """The reward service could not score a request after all retries (the message names the endpoints tried)."""


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0
    down_until: float = 0.0
    served: int = 0
    clients: dict[int, Any] = field(default_factory=dict)  # event loop id → grpc.aio client

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


_RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED", "UNKNOWN")


def _status_of(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    s = str(status() if callable(status) else status or "")
    return s.replace("StatusCode.", "")


def _with_confidence(bs: list[RewardBreakdown], conf: Any) -> list[RewardBreakdown]:
    """Each breakdown with its `confidence` row (`[p, entropy, std]`; NaN → None)."""
    rows = np.asarray(conf, dtype=np.float64).reshape(len(bs), -1)
    out = []
    for b, row in zip(bs, rows, strict=True):
        c = None
        if row.size >= 3 and not np.isnan(row[:3]).any():
            c = Confidence(
                p=float(np.clip(row[0], 0, 1)), entropy=max(0.0, float(row[1])), std=max(0.0, float(row[2]))
            )
        out.append(b.model_copy(update={"confidence": c}))
    return out


def _edit_item(item: Any) -> tuple[Any, Any, str]:
    if isinstance(item, tuple | list) and len(item) == 3:
        return item[0], item[1], item[2]
    for names in (("source", "edited", "instruction"), ("source_image", "edited_image", "instruction")):
        if isinstance(item, dict) and all(n in item for n in names):
            return item[names[0]], item[names[1]], item[names[2]]
        if not isinstance(item, dict) and all(hasattr(item, n) for n in names):
            return getattr(item, names[0]), getattr(item, names[1]), getattr(item, names[2])
    raise InputError(
        "edit item must be (source, edited, instruction), a dict with source/edited (or source_image/edited_image) "
        f"and instruction, or an EditSample; got {type(item).__name__}"
    )


def _gen_item(item: Any) -> tuple[Any, str]:
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1]
    if isinstance(item, dict):
        return item["image"], item["prompt"]
    if hasattr(item, "image") and hasattr(item, "prompt"):
        return item.image, item.prompt
    raise InputError(f"gen item must be (image, prompt), a dict or a GenSample; got {type(item)}")


def _text(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} must be a non-empty string")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from os.fsdecode of non-UTF-8 bytes
        raise InputError(f"{what} is not encodable as UTF-8 (character {exc.start})") from None


class RewardClient:
    """Reward service client over one or more Triton gRPC endpoints (`host:port`)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        max_batch: int = 16,
        max_in_flight: int = 32,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.1,
        cooldown: float = 2.0,
        image_format: ImageFormat = "png",
        jpeg_quality: int = 95,
        edit_model: str = EDIT_REWARD_MODEL,
        gen_model: str = GEN_REWARD_MODEL,
    ) -> None:
        urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        urls = [u.removeprefix("grpc://") for u in urls if u]
        if not urls:
            raise InputError("RewardClient needs at least one endpoint (host:port)")
        if max_batch < 1 or max_in_flight < 1 or retries < 1 or timeout <= 0:
            raise InputError("max_batch, max_in_flight and retries must be >= 1 and timeout > 0")
        self.endpoints = [_Endpoint(u) for u in urls]
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.cooldown = cooldown
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.edit_model = edit_model
        self.gen_model = gen_model
        self._rr = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sems: dict[int, asyncio.Semaphore] = {}
        self._without_confidence: set[str] = set()  # endpoints whose models have no `confidence` output

    # -- public API ----------------------------------------------------------------------------------------------
    async def ascore_edit(self, items: Sequence[Any]) -> list[RewardBreakdown]:
        """Score edits: items are (source, edited, instruction) tuples, dicts or EditSample-like objects."""
        rows = []
        for k, it in enumerate(items):
            src, dst, ins = _edit_item(it)
            rows.append(
                (
                    self._img(src, f"item {k} source"),
                    self._img(dst, f"item {k} edited"),
                    _text(ins, f"item {k} instruction"),
                )
            )
        names = ("source_image", "edited_image", "instruction")
        return await self._score(self.edit_model, names, rows)

    async def ascore_gen(self, items: Sequence[Any]) -> list[RewardBreakdown]:
        """Score generated images: items are (image, prompt) tuples, dicts or GenSample-like objects."""
        rows = []
        for k, it in enumerate(items):
            img, prompt = _gen_item(it)
            rows.append((self._img(img, f"item {k} image"), _text(prompt, f"item {k} prompt")))
        return await self._score(self.gen_model, ("image", "prompt"), rows)

    async def ahealth(self) -> dict[str, bool]:
        """Per endpoint: the server is ready and serves at least one of this client's reward models (ready).

        The answer also steers routing: an unhealthy endpoint is taken out for `cooldown` seconds, a healthy one is
        put back at once."""
        out = {}
        limit = min(self.timeout, 5.0)
        for ep in self.endpoints:
            try:
                c = self._client(ep)
                ok = bool(await asyncio.wait_for(c.is_server_ready(), timeout=limit))
                if ok:
                    models = (self.edit_model, self.gen_model)
                    ok = any([await asyncio.wait_for(c.is_model_ready(m), timeout=limit) for m in models])
            except Exception:
                ok = False
            out[ep.url] = ok
            ep.down_until = 0.0 if ok else time.monotonic() + self.cooldown
        return out

    async def aserved_rubrics(self) -> str:
        """The rubric pack the service asks its critic with, `name@sha256[:12]` (from the reward models' config
        parameters, first endpoint that answers); "" when no endpoint says (a repository exported before packs)."""
        limit = min(self.timeout, 5.0)
        for ep in self.endpoints:
            for model in (self.edit_model, self.gen_model):
                try:
                    cfg = await asyncio.wait_for(
                        self._client(ep).get_model_config(model, as_json=True), limit
                    )
                except Exception:
                    continue
                params = cfg.get("config", {}).get("parameters", {})
                name = params.get("rubrics_name", {}).get("string_value")
                sha = params.get("rubrics_sha256", {}).get("string_value")
                if name and sha:
                    return f"{name}@{sha[:12]}"
        return ""

    def served_rubrics(self) -> str:
        """Sync twin of `aserved_rubrics`."""
        return self._sync(self.aserved_rubrics())

    def score_edit(self, items: Sequence[Any]) -> list[RewardBreakdown]:
        """Sync twin of `ascore_edit`."""
        return self._sync(self.ascore_edit(items))

    def score_gen(self, items: Sequence[Any]) -> list[RewardBreakdown]:
        """Sync twin of `ascore_gen`."""
        return self._sync(self.ascore_gen(items))

    def health(self) -> dict[str, bool]:
        return self._sync(self.ahealth())

    def stats(self) -> dict[str, int]:
        """Requests served per endpoint (for monitoring and tests of routing)."""
        return {ep.url: ep.served for ep in self.endpoints}

    def close(self) -> None:
        if self._loop is not None:
            loop = self._loop

            async def _close() -> None:
                for ep in self.endpoints:
                    c = ep.clients.pop(id(loop), None)
                    if c is not None:
                        await c.close()

            asyncio.run_coroutine_threadsafe(_close(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop = None
            self._thread = None

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        for ep in self.endpoints:
            c = ep.clients.pop(id(loop), None)
            if c is not None:
                await c.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------------------------
    def _img(self, img: Any, what: str) -> bytes:
        return encode_image(img, self.image_format, quality=self.jpeg_quality, what=what)

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, name="firm-reward-client", daemon=True)
                t.start()
                self._loop, self._thread = loop, t
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    def _client(self, ep: _Endpoint) -> Any:
        loop_id = id(asyncio.get_running_loop())
        c = ep.clients.get(loop_id)
        if c is None:
            import tritonclient.grpc.aio as grpcclient

            c = grpcclient.InferenceServerClient(ep.url)
            ep.clients[loop_id] = c
        return c

    def _semaphore(self) -> asyncio.Semaphore:
        loop_id = id(asyncio.get_running_loop())
        if loop_id not in self._sems:
            self._sems[loop_id] = asyncio.Semaphore(self.max_in_flight)
        return self._sems[loop_id]

    def _pick(self, exclude: set[str]) -> _Endpoint:
        """The least-loaded healthy endpoint not yet tried for this request (round robin among ties)."""
        now = time.monotonic()
        healthy = [e for e in self.endpoints if e.healthy(now)]
        pool = [e for e in healthy if e.url not in exclude] or healthy
        if not pool:  # everything is cooling down: try the one that comes back first
            pool = [min(self.endpoints, key=lambda e: e.down_until)]
        least = min(e.in_flight for e in pool)
        ties = [e for e in pool if e.in_flight == least]
        return ties[next(self._rr) % len(ties)]

    async def _score(
        self, model: str, names: Sequence[str], rows: list[tuple[bytes, ...]]
    ) -> list[RewardBreakdown]:
        if not rows:
            return []
        chunks = [rows[i : i + self.max_batch] for i in range(0, len(rows), self.max_batch)]
        parts: list[Awaitable[list[RewardBreakdown]]] = [self._request(model, names, c) for c in chunks]
        results = await asyncio.gather(*parts)
        return [b for part in results for b in part]

    async def _infer(self, ep: _Endpoint, model: str, inputs: list[Any]) -> list[RewardBreakdown]:
        """One inference: the breakdowns with their confidence; an endpoint whose models predate the `confidence`
        output is asked again without it (and from then on)."""
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        with_conf = ep.url not in self._without_confidence
        names = ["breakdown", CONFIDENCE_OUTPUT] if with_conf else ["breakdown"]
        outputs = [grpcclient.InferRequestedOutput(n) for n in names]
        try:
            res = await self._client(ep).infer(model, inputs, outputs=outputs, client_timeout=self.timeout)
        except InferenceServerException as exc:
            older = _status_of(exc) == "INVALID_ARGUMENT" and CONFIDENCE_OUTPUT in str(exc.message())
            if not (with_conf and older):
                raise
            self._without_confidence.add(ep.url)
            return await self._infer(ep, model, inputs)
        bs = [RewardBreakdown.model_validate_json(bytes(x)) for x in res.as_numpy("breakdown").reshape(-1)]
        return _with_confidence(bs, res.as_numpy(CONFIDENCE_OUTPUT)) if with_conf else bs

    async def _request(
        self, model: str, names: Sequence[str], rows: list[tuple[bytes, ...]]
    ) -> list[RewardBreakdown]:
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        inputs = []
        for col, name in enumerate(names):
            arr = np.array([[r[col]] for r in rows], dtype=np.object_)
            inp = grpcclient.InferInput(name, list(arr.shape), "BYTES")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        tried: list[str] = []
        last: Exception | None = None
        async with self._semaphore():
            for attempt in range(self.retries):
                ep = self._pick(set(tried))
                tried.append(ep.url)
                ep.in_flight += 1
                try:
                    bs = await self._infer(ep, model, inputs)
                    ep.served += 1
                    return bs
                except InferenceServerException as exc:
                    status = _status_of(exc)
                    if status == "INVALID_ARGUMENT":
                        raise InputError(f"reward service rejected the request: {exc.message()}") from None
                    if status and not any(s in status for s in _RETRYABLE):
                        raise RewardServiceError(f"{model} at {ep.url}: {status}: {exc.message()}") from None
                    last = exc
                    ep.down_until = time.monotonic() + self.cooldown
                except (TimeoutError, OSError) as exc:
                    last = exc
                    ep.down_until = time.monotonic() + self.cooldown
                finally:
                    ep.in_flight -= 1
                if attempt + 1 < self.retries:
                    await asyncio.sleep(self.backoff * (2**attempt) * (0.5 + random.random()))
        where = ", ".join(ep.url for ep in self.endpoints)
        raise RewardServiceError(
            f"{model}: no endpoint could serve the request after {self.retries} attempts "
            f"(tried {', '.join(tried)}): {last}; is the reward service running at {where}? "
            "(start one with `firmctl serve start`)"
        )
