"""A local HTTP endpoint answering like the Kubeflow Pipelines v2beta1 API for what `firmctl pipeline submit/upload`
calls: healthz, experiments (list/create), pipelines (list by name, upload), pipeline versions (list, upload), runs
(create). No KFP backend can run on the project's CI machines: this checks FIRM's calls through the real `kfp.Client`
(version reuse by content, run parameters, service account), not KFP itself."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from firm.jsonhttp import JSONHandler


class FakeKFP:
    def __init__(self) -> None:
        self.experiments: list[dict[str, Any]] = []
        self.pipelines: list[dict[str, Any]] = []
        self.versions: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.uploads: list[tuple[str, bytes]] = []
        # what healthz answers: the API server's fields; the KFP UI in front of it adds its release (frontendTagName)
        self.healthz: dict[str, Any] = {"multi_user": False}
        self.authorization: list[str | None] = []  # the Authorization header of every request

    @staticmethod
    def _filtered(items: list[dict[str, Any]], query: dict[str, list[str]]) -> list[dict[str, Any]]:
        raw = query.get("filter", [""])[0]
        if not raw:
            return items
        preds = json.loads(raw).get("predicates", [])
        for p in preds:
            key = p.get("key")
            value = p.get("stringValue", p.get("string_value"))
            items = [i for i in items if i.get(key) == value]
        return items

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any]:
        if path == "/apis/v2beta1/healthz":
            return 200, self.healthz
        if path == "/apis/v2beta1/experiments":
            if method == "GET":
                return 200, {"experiments": self._filtered(self.experiments, query)}
            exp = {**json.loads(body), "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments.append(exp)
            return 200, exp
        if path == "/apis/v2beta1/pipelines" and method == "GET":
            return 200, {"pipelines": self._filtered(self.pipelines, query)}
        if path == "/apis/v2beta1/pipelines/upload" and method == "POST":
            name = query["name"][0]
            pipeline = {"pipeline_id": f"p-{len(self.pipelines) + 1}", "display_name": name}
            self.pipelines.append(pipeline)
            self.uploads.append((name, body))
            self.versions.append({"pipeline_id": pipeline["pipeline_id"], "display_name": name,
                                  "pipeline_version_id": f"v-{len(self.versions) + 1}"})  # fmt: skip
            return 200, pipeline
        m = re.match(r"^/apis/v2beta1/pipelines/([^/]+)/versions$", path)
        if m and method == "GET":
            return 200, {"pipeline_versions": [v for v in self.versions if v["pipeline_id"] == m.group(1)]}
        if path == "/apis/v2beta1/pipelines/upload_version" and method == "POST":
            pid = (query.get("pipelineid") or query.get("pipeline_id"))[0]
            version = {"pipeline_id": pid, "display_name": query["name"][0],
                       "pipeline_version_id": f"v-{len(self.versions) + 1}"}  # fmt: skip
            self.versions.append(version)
            self.uploads.append((query["name"][0], body))
            return 200, version
        if path == "/apis/v2beta1/runs" and method == "POST":
            run = {**json.loads(body), "run_id": f"run-{len(self.runs) + 1}"}
            self.runs.append(run)
            return 200, run
        return 404, {"error": f"not found: {method} {path}", "code": 5}


@contextmanager
def serve(api: FakeKFP) -> Iterator[str]:
    class Handler(JSONHandler):
        def _do(self) -> None:
            url = urlparse(self.path)
            api.authorization.append(self.headers.get("Authorization"))
            code, payload = api.handle(self.command, url.path, parse_qs(url.query), self.body_bytes())
            self.send_json(code, payload)

        do_GET = do_POST = do_DELETE = _do

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
