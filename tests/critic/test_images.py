"""Loading critic images: every source kind, and clear errors for everything that is not a usable picture."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from firm.errors import InputError
from firm.images import fit_pixels, load_image
from firm.models.images import png_bytes, shapes_image


def _png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR header is patched to announce width×height (nothing that large is allocated)."""
    data = bytearray(png_bytes(shapes_image(size=(8, 8))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_every_source_kind_gives_the_same_rgb_image(tmp_path: Path, fresh_home: Path) -> None:
    img = shapes_image([("circle", "green")])
    path = tmp_path / "pic.png"
    img.save(path)
    rgba = img.convert("RGBA")
    for src in (img, rgba, png_bytes(img), path, str(path), path.as_uri()):
        got = load_image(src)
        assert got.mode == "RGB" and got.size == (64, 64)
        assert got.tobytes() == img.tobytes(), type(src)


def test_s3_uri_via_the_object_store(s3_env: dict[str, str], fresh_home: Path) -> None:
    from firm.config import get_settings
    from firm.storage import S3Store, write_bytes

    S3Store.from_settings(s3_env["bucket"], get_settings(fresh=True)).make_bucket()
    img = shapes_image([("triangle", "purple")])
    uri = write_bytes(f"s3://{s3_env['bucket']}/images/a.png", png_bytes(img))
    assert load_image(uri).tobytes() == img.tobytes()
    with pytest.raises(InputError, match=r"images/missing.png"):
        load_image(f"s3://{s3_env['bucket']}/images/missing.png")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"#!/bin/sh\necho not an image\n", "not an image file"),
        (png_bytes(shapes_image())[:60], "unreadable image"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_files_name_the_input(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        load_image(path)
    assert str(path) in str(err.value)


def test_missing_file_directory_and_label(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="not a file"):
        load_image(tmp_path)
    with pytest.raises(InputError, match=r"^edited image of sample s7: empty"):
        load_image(b"", name="edited image of sample s7")
    with pytest.raises(InputError, match="unsupported image source type int"):
        load_image(42)  # type: ignore[arg-type]


def test_zero_size_and_header_bombs_are_refused_before_decoding() -> None:
    with pytest.raises(InputError, match="zero-size image"):
        load_image(Image.new("RGB", (0, 5)))
    # 100k × 100k announced in the header: refused from the header alone (PIL's own bomb guard or ours)
    with pytest.raises(InputError, match=r"exceeds the decode budget|unreadable image"):
        load_image(_png_claiming(100_000, 100_000))
    with pytest.raises(
        InputError, match="20000x5000 = 100000000 pixels exceeds the decode budget of 64000000"
    ):
        load_image(_png_claiming(20_000, 5_000))


def test_fit_pixels_keeps_aspect_and_budget() -> None:
    big = Image.new("RGB", (3000, 1000), (1, 2, 3))
    out = fit_pixels(big, max_pixels=112 * 112, factor=28)
    w, h = out.size
    assert w * h <= 112 * 112 and w % 28 == 0 and h % 28 == 0
    assert abs(w / h - 3.0) < 0.6
    small = Image.new("RGB", (56, 84))
    assert fit_pixels(small, max_pixels=112 * 112) is small  # aligned and within budget: untouched
    tiny = fit_pixels(Image.new("RGB", (5, 7)), max_pixels=112 * 112)
    assert tiny.size[0] >= 28 and tiny.size[1] >= 28
    with pytest.raises(InputError, match="aspect ratio"):
        fit_pixels(Image.new("RGB", (2000, 3)), max_pixels=112 * 112)
    with pytest.raises(InputError, match="below one 28x28 patch"):
        fit_pixels(small, max_pixels=100)
