"""The quickstart's teacher reads the synthetic images right and answers in the formats curation parses."""

from __future__ import annotations

import base64
import io
import json

import httpx
from PIL import Image

from firm.curation.synthetic import synthetic_edit_items, synthetic_gen_items
from firm.quickstart.teacher import MODEL_NAME, answer, red_squares, repainted_cells, serve_teacher
from firm.rewards.parsing import parse_answer


def _url(img: Image.Image, fmt: str = "PNG") -> dict:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    b64 = base64.b64encode(buf.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/{fmt.lower()};base64,{b64}"}}


def _body(text: str, *images: Image.Image, fmt: str = "PNG") -> dict:
    content = [_url(i, fmt) for i in images] + [{"type": "text", "text": text}]
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 256}


def test_measurements_recover_every_synthetic_edit() -> None:
    for it in synthetic_edit_items(60, seed=7, size=112, requested=4):
        assert sum(red_squares(it.edited)) == it.drawn, it.id
        assert sum(red_squares(it.source)) == 0
        assert sum(repainted_cells(it.source, it.edited)) == it.changed, it.id
    for it in synthetic_gen_items(20, seed=7, size=112):
        assert sum(red_squares(it.image)) == it.drawn, it.id


def test_answers_parse_to_the_known_scores_even_after_a_jpeg_round_trip() -> None:
    for it in synthetic_edit_items(12, seed=3, size=112, requested=4):
        for axis, word in (("execution", "EXECUTION"), ("consistency", "CONSISTENCY")):
            text = answer(
                _body(f"Judge {word} only. Instruction: {it.instruction}", it.source, it.edited, fmt="JPEG")
            )
            parsed = parse_answer("edit", text)
            assert parsed.status == "ok" and parsed.score == it.score(axis), (it.id, axis, text)
        report = answer(_body("The first image is the SOURCE image ... Compare them.", it.source, it.edited))
        assert f"{it.drawn} red squares were added" in report
    for it in synthetic_gen_items(6, seed=3, size=112):
        text = answer(_body(f'Prompt: "{it.prompt}". Check the plan.', it.image))
        assert parse_answer("gen", text).score == it.instruction
        assert "red squares" in answer(_body(f'"{it.prompt}"\nWrite a checklist for verifying an image.'))


def test_endpoint_speaks_the_chat_api_and_refuses_foreign_requests() -> None:
    it = synthetic_edit_items(1, seed=1, size=112, requested=4)[0]
    with serve_teacher() as (url, calls):
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == MODEL_NAME
        ok = httpx.post(
            f"{url}/v1/chat/completions",
            json=_body(f"Judge EXECUTION. {it.instruction}", it.source, it.edited),
        )
        assert ok.status_code == 200
        content = ok.json()["choices"][0]["message"]["content"]
        assert json.loads(content)["score"] == [it.execution]
        bad = httpx.post(f"{url}/v1/chat/completions", json=_body("Describe this photo of a cat.", it.source))
        assert bad.status_code == 400 and "red-square" in bad.json()["error"]["message"]
        assert calls["requests"] == 1
