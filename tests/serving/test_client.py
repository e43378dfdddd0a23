"""RewardClient pieces that need no model: client-side image encoding, argument checks, a dead service."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from firm.errors import InputError
from firm.processes import free_port
from firm.serving.client import RewardClient, RewardServiceError
from firm.serving.encoding import encode_image


def _decode(b: bytes) -> Image.Image:
    return Image.open(io.BytesIO(b))


def test_encode_tensors_arrays_pil_and_files(tmp_path: Path) -> None:
    chw = torch.zeros(3, 8, 6)
    chw[0] = 1.0  # pure red, float in [0, 1]
    img = _decode(encode_image(chw))
    assert img.format == "PNG" and img.size == (6, 8) and img.getpixel((0, 0)) == (255, 0, 0)
    hwc = np.zeros((5, 7, 3), dtype=np.uint8)
    hwc[..., 2] = 200
    assert _decode(encode_image(hwc)).getpixel((3, 3)) == (0, 0, 200)
    grey = _decode(encode_image(torch.full((1, 4, 4), 0.5, dtype=torch.bfloat16)))
    assert grey.mode == "RGB" and grey.getpixel((0, 0))[0] in (127, 128)
    jpeg = encode_image(Image.new("RGB", (16, 16), (0, 255, 0)), "jpeg")
    assert _decode(jpeg).format == "JPEG"
    p = tmp_path / "x.png"
    Image.new("RGB", (3, 3)).save(p)
    assert encode_image(str(p)) == p.read_bytes()  # already encoded: passed through
    bmp = tmp_path / "x.bmp"
    Image.new("RGB", (3, 3), (9, 9, 9)).save(bmp)
    assert _decode(encode_image(bmp)).format == "PNG"  # other formats are re-encoded


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros((2, 2, 5)), "channels"),
        (np.zeros((0, 4, 3)), "zero-size"),
        (torch.tensor([[[float("nan")]]]), "NaN"),
        (b"", "empty"),
        ("/nonexistent/img.png", "no such file"),
        (3.5, "cannot encode"),
    ],
)
def test_encode_rejects_bad_images(value: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        encode_image(value)


def test_client_argument_checks() -> None:
    with pytest.raises(InputError, match="endpoint"):
        RewardClient([])
    with RewardClient("127.0.0.1:1") as c:
        with pytest.raises(InputError, match="instruction"):
            c.score_edit([(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), "  ")])
        with pytest.raises(InputError, match="prompt is not encodable as UTF-8"):
            c.score_gen([(np.zeros((4, 4, 3), np.uint8), "bad \udcff")])
        with pytest.raises(InputError, match="gen item"):
            c.score_gen([("only-one",)])
        assert c.score_edit([]) == []


def test_dead_service_fails_clearly_after_retries() -> None:
    port = free_port()
    img = np.zeros((4, 4, 3), np.uint8)
    with RewardClient(f"127.0.0.1:{port}", retries=3, backoff=0.01, timeout=5) as c:
        assert c.health() == {f"127.0.0.1:{port}": False}
        t = time.monotonic()
        with pytest.raises(RewardServiceError, match=r"after 3 attempts"):
            c.score_gen([(img, "a prompt")])
        assert time.monotonic() - t < 10


def test_per_request_timeout_on_a_stalled_endpoint() -> None:
    """An endpoint that accepts TCP but never answers: each attempt ends at the per-request deadline."""
    img = np.zeros((4, 4, 3), np.uint8)
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        url = f"127.0.0.1:{stalled.getsockname()[1]}"
        with RewardClient(url, retries=2, backoff=0.01, timeout=0.5) as c:
            t = time.monotonic()
            with pytest.raises(RewardServiceError, match=r"after 2 attempts.*(?i:deadline)"):
                c.score_gen([(img, "a prompt")])
            took = time.monotonic() - t
            assert 0.9 <= took < 5.0, took
