"""A JSON request handler for FIRM's small local HTTP endpoints (the quickstart's teacher) and the tests' fakes of
remote APIs (an OpenAI-compatible server, the KFP API): quiet logs, a JSON body in, a JSON answer out. Bind servers
that use it to 127.0.0.1."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class JSONHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # no access log on stderr
        return None

    def body_bytes(self) -> bytes:
        """The request body (empty without a Content-Length)."""
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def read_json(self) -> Any:
        """The request body as JSON (an empty body is `{}`)."""
        return json.loads(self.body_bytes() or b"{}")

    def send_json(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
