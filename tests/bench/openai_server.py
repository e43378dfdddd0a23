"""A small real OpenAI-compatible `/v1/chat/completions` server for tests, backed by a FIRM critic's model.

It behaves like a vLLM endpoint serving the critic: it knows nothing about FIRM rubrics; it decodes the
`image_url` data URLs of the chat messages, applies the model's chat template, generates greedily (`max_tokens`)
and returns the text with a `usage` block. It listens on 127.0.0.1 only, checks the bearer key, counts requests and
concurrent requests, answers `GET /v1/models`, and can answer the first `fail_first` requests with `fail_status`
(503 by default; 429 for rate limiting) to exercise client retries.

For deterministic teacher tests it can run without a model: `script(body) -> text | (status, message) | None`
answers from the request itself (None: the model answers), and `latency_s` is a fixed artificial latency per
request (default 0.02 s, which also lets concurrent requests overlap so a concurrency limit is observable).
A script may also answer `{"text": ..., "digit_probs": [p1, ..., p5]}`: a request with `logprobs: true` then gets
`choices[0].logprobs.content` like vLLM's — the text cut into tokens (digits alone, words, spaces, punctuation),
each certain (logprob 0) except the digits 1..5, which carry `digit_probs` over "1".."5" as their top
alternatives. `refuse_logprobs = True` answers any request asking for logprobs with HTTP 400 (an endpoint
without them).

`serve_scripted_process(script, latency_s=...)` is the throughput variant (benchmarks): scripted answers only, an
asyncio server (HTTP/1.1 keep-alive, the latency slept asynchronously, so thousands of requests can wait at once) in
a process of its own, so the server does not compete with the client for one interpreter's lock.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from firm.jsonhttp import JSONHandler


class ChatServer:
    def __init__(
        self,
        critic: Any,
        *,
        model_name: str = "firm-tiny-critic",
        api_key: str | None = None,
        script: Callable[[dict[str, Any]], str | tuple[int, str] | None] | None = None,
        latency_s: float = 0.02,
    ) -> None:
        self.critic = critic
        self.model_name = model_name
        self.api_key = api_key
        self.script = script
        self.latency_s = latency_s
        self.fail_first = 0
        self.fail_status = 503
        self.refuse_logprobs = False
        self.logprob_requests = 0  # requests that asked for logprobs (and were answered with them)
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()

    def reset(self, fail_first: int = 0, fail_status: int = 503) -> None:
        with self._lock:
            self.fail_first, self.requests, self.max_in_flight = fail_first, 0, 0
            self.fail_status = fail_status

    # ---------------------------------------------------------------------------------------------- the model
    def complete(self, body: dict[str, Any]) -> tuple[str, str, int, int]:
        """(answer, finish_reason, prompt tokens, completion tokens): finish_reason is "length" when the answer
        used all of max_tokens, as vLLM reports it."""
        from firm.critic.messages import render_prompt
        from firm.images import fit_pixels

        critic = self.critic
        images: list[Image.Image] = []
        messages = []
        for m in body["messages"]:
            content = []
            for part in (
                m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            ):
                if part["type"] == "image_url":
                    header, b64 = part["image_url"]["url"].split(",", 1)
                    assert header.startswith("data:image/"), header
                    img = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
                    img = fit_pixels(img, critic.max_pixels, critic.factor)
                    images.append(img)
                    content.append({"type": "image", "image": img})
                else:
                    content.append({"type": "text", "text": part["text"]})
            messages.append({"role": m["role"], "content": content})
        prompt = render_prompt(critic.processor, messages)
        budget = int(body.get("max_tokens") or critic.max_new_tokens or 256)
        with self._model_lock:
            (text,) = critic.generate_texts([prompt], images or None, max_new_tokens=budget)
        used = len(critic.tokenizer(text, add_special_tokens=False)["input_ids"])
        n_prompt = len(critic.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return text, "length" if used >= budget else "stop", n_prompt, used

    # ----------------------------------------------------------------------------------------------- the HTTP
    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(JSONHandler):
            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    return self.send_json(404, {"error": {"message": f"no route {self.path}"}})
                self.send_json(
                    200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]}
                )

            def do_POST(self) -> None:
                with server._lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fail = server.fail_first > 0
                    if fail:
                        server.fail_first -= 1
                try:
                    body = json.loads(self.body_bytes())
                    time.sleep(server.latency_s)  # also lets concurrent requests overlap (limits observable)
                    if self.path != "/v1/chat/completions":
                        return self.send_json(404, {"error": {"message": f"no route {self.path}"}})
                    if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                        return self.send_json(401, {"error": {"message": "invalid api key"}})
                    if fail:
                        return self.send_json(server.fail_status, {"error": {"message": "overloaded, retry"}})
                    if body.get("model") != server.model_name:
                        return self.send_json(
                            404, {"error": {"message": f"model {body.get('model')} not served"}}
                        )
                    if body.get("logprobs") and server.refuse_logprobs:
                        return self.send_json(400, {"error": {"message": "logprobs are not supported"}})
                    scripted = server.script(body) if server.script is not None else None
                    if isinstance(scripted, tuple):
                        return self.send_json(scripted[0], {"error": {"message": scripted[1]}})
                    digit_probs = None
                    if isinstance(scripted, dict):
                        scripted, digit_probs = scripted["text"], scripted.get("digit_probs")
                    if scripted is not None:
                        budget = int(body.get("max_tokens") or 256)
                        words = scripted.split()
                        cut = len(words) > budget  # a word stands for a token
                        text = " ".join(words[:budget]) if cut else scripted
                        finish, n_prompt, used = (
                            ("length" if cut else "stop"),
                            len(json.dumps(body)) // 4,
                            len(words),
                        )
                    else:
                        text, finish, n_prompt, used = server.complete(body)
                    choice: dict[str, Any] = {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                    if body.get("logprobs") and digit_probs is not None:
                        with server._lock:
                            server.logprob_requests += 1
                        choice["logprobs"] = {
                            "content": _token_logprobs(text, digit_probs, int(body.get("top_logprobs") or 0))
                        }
                    self.send_json(
                        200,
                        {
                            "id": f"chatcmpl-{server.requests}",
                            "object": "chat.completion",
                            "model": server.model_name,
                            "choices": [choice],
                            "usage": {
                                "prompt_tokens": n_prompt,
                                "completion_tokens": used,
                                "total_tokens": n_prompt + used,
                            },
                        },
                    )
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler


def _token_logprobs(text: str, digit_probs: list[float], k: int) -> list[dict[str, Any]]:
    """vLLM-style `logprobs.content` for a scripted answer (see the module docstring)."""
    import math
    import re

    out = []
    for tok in re.findall(r"\d|[^\W\d]+|\s+|[^\w\s]", text):
        if tok in "12345" and len(tok) == 1:
            alts = sorted(
                ((str(d), math.log(p)) for d, p in enumerate(digit_probs, start=1) if p > 0),
                key=lambda a: -a[1],
            )
            own = math.log(digit_probs[int(tok) - 1]) if digit_probs[int(tok) - 1] > 0 else -1e4
        else:
            alts, own = [(tok, 0.0)], 0.0
        top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts[:k]]
        out.append({"token": tok, "logprob": own, "bytes": list(tok.encode()), "top_logprobs": top})
    return out


@contextmanager
def serve(critic: Any, **kwargs: Any) -> Iterator[tuple[ChatServer, str]]:
    """Run a ChatServer on 127.0.0.1 (free port); yields (server, base_url)."""
    chat = ChatServer(critic, **kwargs)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), chat.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield chat, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------------ throughput variant
def _scripted_body(model_name: str, n: int, body: dict[str, Any], text: str) -> dict[str, Any]:
    """The chat-completions answer of a scripted `text` (a word stands for a token, as in ChatServer)."""
    budget = int(body.get("max_tokens") or 256)
    words = text.split()
    cut = len(words) > budget
    used = min(len(words), budget)
    n_prompt = sum(len(json.dumps(m)) for m in body.get("messages", [])) // 4
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(words[:budget]) if cut else text},
                "finish_reason": "length" if cut else "stop",
            }
        ],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": used, "total_tokens": n_prompt + used},
    }


async def _async_server(script: Any, latency_s: float, model_name: str, port_out: Any, stop: Any) -> None:
    count = 0

    async def answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        nonlocal count
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": model_name, "object": "model"}]}
        if method != "POST" or path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {path}"}}
        req = json.loads(body)
        await asyncio.sleep(latency_s)
        if req.get("model") != model_name:
            return 404, {"error": {"message": f"model {req.get('model')} not served"}}
        scripted = script(req)
        if isinstance(scripted, tuple):
            return scripted[0], {"error": {"message": scripted[1]}}
        count += 1
        text = scripted["text"] if isinstance(scripted, dict) else scripted  # no logprobs here
        return 200, _scripted_body(model_name, count, req, str(text))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path, _ = head[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head[1:] if ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                code, obj = await answer(method, path, body)
                data = json.dumps(obj).encode()
                writer.write(
                    f"HTTP/1.1 {code} {'OK' if code == 200 else 'Error'}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    port_out.put(server.sockets[0].getsockname()[1])
    async with server:
        while not stop.is_set():
            await asyncio.sleep(0.05)


def _async_server_main(script: Any, latency_s: float, model_name: str, port_out: Any, stop: Any) -> None:
    asyncio.run(_async_server(script, latency_s, model_name, port_out, stop))


@contextmanager
def serve_scripted_process(
    script: Callable[[dict[str, Any]], str | tuple[int, str]],
    *,
    latency_s: float = 0.1,
    model_name: str = "bench",
) -> Iterator[str]:
    """A scripted chat-completions server in its own process (see the module docstring); yields the base URL.
    `script` must be picklable (it is sent to the server process)."""
    ctx = mp.get_context("spawn")
    port_out, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(
        target=_async_server_main, args=(script, latency_s, model_name, port_out, stop), daemon=True
    )
    proc.start()
    try:
        yield f"http://127.0.0.1:{port_out.get(timeout=60)}"
    finally:
        stop.set()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
