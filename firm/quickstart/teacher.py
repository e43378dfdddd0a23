"""The quickstart's teacher: an OpenAI-compatible chat endpoint on 127.0.0.1 that *measures* the synthetic images.

FIRM's curation asks a large VLM teacher (and an LLM planner) through the OpenAI chat API. No such model fits the
quickstart's minutes on a CPU, but the quickstart's source data is the known-answer synthetic world of
`firm.curation.synthetic` (red squares asked for and drawn in a 2×2 grid; unrequested changes repaint whole cells),
where a careful teacher's judgement can be computed from the pixels. This endpoint does exactly that and answers in
the formats the curation stages ask for:

- difference report (two images, no rubric): per cell, which red squares appeared and which cells were repainted;
- edit scoring (the pack's `edit.execution.teacher` / `edit.consistency.teacher`): a JSON answer whose rationale
  states the measured count (execution = 1 + round(4·drawn/requested), consistency = 5 − repainted cells);
- plan (text only): a one-line checklist for the prompt's red-square count;
- gen scoring (`gen.instruction.teacher`, one image): the measured count and `Final Alignment Rating: k \\boxed{k}`.

So the quickstart runs the real curation code — HTTP teacher client, two-stage prompts, the teacher-call cache,
parsing, leak checks, balancing, publishing — with a teacher whose labels are right. It is not a model: requests
outside the synthetic world get a 400. Stage and axis are recognised from the prompts' wording (the firm-v1 pack and
firm-curation-v1 prompts: "EXECUTION" / "CONSISTENCY" in the rubric, "Compare them" in the report prompt); the
quickstart test fails if that wording drifts.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

from firm.jsonhttp import JSONHandler

MODEL_NAME = "firm-quickstart-teacher"
_RED = np.array([220, 30, 30], dtype=np.float32)
_REQUESTED = re.compile(r"(?:Add|picture of) (\d+) red square", re.IGNORECASE)


def _cells(a: np.ndarray) -> list[np.ndarray]:
    h, w = a.shape[:2]
    return [a[y : y + h // 2, x : x + w // 2] for y in (0, h // 2) for x in (0, w // 2)]


def _centre(cell: np.ndarray) -> np.ndarray:
    c = cell.shape[0]
    m = max(1, round(c * 0.3))
    return cell[m : c - m, m : c - m]


def red_squares(img: Image.Image) -> list[bool]:
    """Per cell of the 2×2 grid: does the cell's centre hold a red square? (Half its pixels near the red.)"""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    return [bool((np.abs(_centre(c) - _RED).max(axis=-1) < 60).mean() > 0.5) for c in _cells(a)]


def repainted_cells(source: Image.Image, edited: Image.Image) -> list[bool]:
    """Per cell: was the cell repainted beyond the request? (Most of its background ring differs from the source.)"""
    s = np.asarray(source.convert("RGB").resize(edited.size), dtype=np.float32)
    e = np.asarray(edited.convert("RGB"), dtype=np.float32)
    out = []
    for cs, ce in zip(_cells(s), _cells(e), strict=True):
        ring = np.ones(cs.shape[:2], dtype=bool)
        c = cs.shape[0]
        m = max(1, round(c * 0.2))
        ring[m : c - m, m : c - m] = False  # the square's area belongs to execution
        diff = np.abs(cs - ce).max(axis=-1) > 40
        out.append(bool(diff[ring].mean() > 0.5))
    return out


@dataclass
class _Request:
    text: str
    images: list[Image.Image] = field(default_factory=list)
    max_tokens: int = 256


def _parse(body: dict[str, Any]) -> _Request:
    texts: list[str] = []
    images: list[Image.Image] = []
    for m in body.get("messages", []):
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        for part in parts:
            if part.get("type") == "image_url":
                _, b64 = part["image_url"]["url"].split(",", 1)
                images.append(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
            elif part.get("type") == "text":
                texts.append(part["text"])
    return _Request("\n".join(texts), images, int(body.get("max_tokens") or 256))


def _requested(text: str) -> int:
    hits = _REQUESTED.findall(text)
    if not hits:
        raise ValueError("no red-square count in the request: not a quickstart item")
    return int(hits[-1])


def answer(body: dict[str, Any]) -> str:
    """The teacher's answer to one chat-completions request (ValueError: not a synthetic-world request)."""
    req = _parse(body)
    if len(req.images) == 2:
        source, edited = req.images
        drawn = sum(a and not b for a, b in zip(red_squares(edited), red_squares(source), strict=True))
        changed = sum(repainted_cells(source, edited))
        if "EXECUTION" in req.text:
            asked = _requested(req.text)
            k = 1 + round(4 * min(drawn, asked) / asked)
            return json.dumps(
                {"reasoning": f"{drawn} of {asked} requested red squares were added.", "score": [k]}
            )
        if "CONSISTENCY" in req.text:
            reasoning = f"{changed} unrelated regions changed."
            return json.dumps({"reasoning": reasoning, "score": [5 - changed]})
        if "Compare them" in req.text:
            return (
                f"Obvious change: {drawn} red squares were added.\n"
                f"Detailed differences: object count: {drawn} new red squares; background: {changed} of the four "
                "grid cells were repainted in another colour; everything else: none."
            )
        raise ValueError("two images but neither a difference report nor an edit rubric")
    if len(req.images) == 1:
        asked = _requested(req.text)
        drawn = sum(red_squares(req.images[0]))
        k = 5 - abs(drawn - asked)
        return f"The image shows {drawn} red squares.\nFinal Alignment Rating: {k}\n\\boxed{{{k}}}"
    if not req.images and "checklist" in req.text.lower():
        return f"1. Does the image show exactly {_requested(req.text)} red squares?"
    raise ValueError("not a request of the quickstart's curation")


class _Handler(JSONHandler):
    calls: dict[str, int]
    lock: threading.Lock

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            return self.send_json(404, {"error": {"message": f"no route {self.path}"}})
        self.send_json(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})

    def do_POST(self) -> None:
        body = self.read_json()
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.send_json(404, {"error": {"message": f"no route {self.path}"}})
        try:
            text = answer(body)
        except (ValueError, KeyError, OSError) as exc:
            return self.send_json(400, {"error": {"message": str(exc)}})
        with self.lock:
            self.calls["requests"] += 1
        words = len(text.split())
        self.send_json(
            200,
            {
                "id": "quickstart",
                "object": "chat.completion",
                "model": MODEL_NAME,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": words, "total_tokens": words},
            },
        )


@contextmanager
def serve_teacher() -> Iterator[tuple[str, dict[str, int]]]:
    """Run the teacher on 127.0.0.1 (a free port); yields (base URL, call counter)."""
    calls = {"requests": 0}
    handler = type("Handler", (_Handler,), {"calls": calls, "lock": threading.Lock()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True, name="quickstart-teacher")
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", calls
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
