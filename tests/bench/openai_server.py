"""A small real OpenAI-compatible `/v1/chat/completions` server for tests, backed by a FIRM critic's model.

It behaves like a vLLM endpoint serving the critic: it knows nothing about FIRM rubrics; it decodes the
`image_url` data URLs of the chat messages, applies the model's chat template, generates greedily (`max_tokens`)
and returns the text. It listens on 127.0.0.1 only, checks the bearer key, counts requests and concurrent requests,
and can answer the first `fail_first` requests with 503 to exercise client retries.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image


class ChatServer:
    def __init__(
        self, critic: Any, *, model_name: str = "firm-tiny-critic", api_key: str | None = None
    ) -> None:
        self.critic = critic
        self.model_name = model_name
        self.api_key = api_key
        self.fail_first = 0
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()

    def reset(self, fail_first: int = 0) -> None:
        with self._lock:
            self.fail_first, self.requests, self.max_in_flight = fail_first, 0, 0

    # ---------------------------------------------------------------------------------------------- the model
    def complete(self, body: dict[str, Any]) -> tuple[str, str]:
        """(answer, finish_reason): "length" when the answer used all of max_tokens, as vLLM reports it."""
        from firm.critic.images import fit_pixels
        from firm.critic.messages import render_prompt

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
            (text,) = critic.generate_texts([prompt], images, max_new_tokens=budget)
        used = len(critic.tokenizer(text, add_special_tokens=False)["input_ids"])
        return text, "length" if used >= budget else "stop"

    # ----------------------------------------------------------------------------------------------- the HTTP
    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                return None

            def _send(self, code: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                with server._lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fail = server.fail_first > 0
                    if fail:
                        server.fail_first -= 1
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                    time.sleep(0.02)  # let concurrent requests overlap so the limit is observable
                    if self.path != "/v1/chat/completions":
                        return self._send(404, {"error": {"message": f"no route {self.path}"}})
                    if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                        return self._send(401, {"error": {"message": "invalid api key"}})
                    if fail:
                        return self._send(503, {"error": {"message": "overloaded, retry"}})
                    if body.get("model") != server.model_name:
                        return self._send(
                            404, {"error": {"message": f"model {body.get('model')} not served"}}
                        )
                    text, finish = server.complete(body)
                    self._send(
                        200,
                        {
                            "id": f"chatcmpl-{server.requests}",
                            "object": "chat.completion",
                            "model": server.model_name,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": text},
                                    "finish_reason": finish,
                                }
                            ],
                        },
                    )
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler


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
