"""Loading critic images: every source kind, and clear errors for everything that is not a usable picture; the one
resize rule (`firm.images.pixel_rule`) read from a Qwen3-VL processor config."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from firm.errors import ConfigError, InputError
from firm.images import PixelRule, fit_pixels, load_image, pixel_rule, processor_pixel_rule
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
    assert fit_pixels(small, 112 * 112, 28) is small  # aligned and within budget: untouched
    tiny = fit_pixels(Image.new("RGB", (5, 7)), 112 * 112, 28)
    assert tiny.size[0] >= 28 and tiny.size[1] >= 28
    with pytest.raises(InputError, match="aspect ratio"):
        fit_pixels(Image.new("RGB", (2000, 3)), 112 * 112, 28)
    with pytest.raises(InputError, match="below one 28x28 patch"):
        fit_pixels(small, 100, 28)


def _saved_image_processor(tmp_path: Path, config: dict[str, object]) -> object:
    """An image processor loaded the way transformers loads a checkpoint's preprocessor_config.json."""
    import json

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    return Qwen2VLImageProcessorPil.from_pretrained(tmp_path)


# Qwen/Qwen3-VL-8B-Instruct's preprocessor_config.json (its image part)
QWEN3_VL_8B = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "Qwen2VLImageProcessorFast",
}


def test_the_rule_comes_from_the_processor_config(tmp_path: Path) -> None:
    """Factor and bounds are the model's (Qwen3-VL: 16 × 2 = 32; 65536..16777216 pixels), never FIRM constants;
    one resize reaches the sizes the processor itself would produce, so it never resizes a fitted image again."""
    ip = _saved_image_processor(tmp_path, QWEN3_VL_8B)
    assert processor_pixel_rule(ip) == PixelRule(factor=32, min_pixels=65536, max_pixels=16777216)
    served = pixel_rule(ip)
    assert served.size(1920, 1080) == (1920, 1088)
    recipe = pixel_rule(ip, budget=1003520)  # the paper recipes' model.max_pixels
    assert recipe.size(1920, 1080) == (1312, 736)  # was 1316×728 (factor 28), then 1312×736 by the processor
    assert recipe.size(1024, 1024) == (992, 992)  # was 980² (factor 28), then 992² by the processor
    assert served.size(200, 150) == (320, 224)  # the processor's own minimum enlarges a small image
    assert pixel_rule(ip, min_pixels=1).size(200, 150) == (
        192,
        160,
    )  # a rubric's lower bound (firm-v1) does not
    for rule in (served, recipe, pixel_rule(ip, min_pixels=1)):
        for w, h in ((480, 270), (700, 700), (200, 150), (33, 1500)):
            fitted = rule.fit(Image.new("RGB", (w, h)))
            assert fitted.size == rule.size(w, h) and rule.size(*fitted.size) == fitted.size  # a fixed point
            # what the processor makes of the fitted image under the rule's size: the same grid, no second resize
            out = ip(fitted, size=rule.processor_size(), return_tensors="np")
            assert out["image_grid_thw"].tolist() == [[1, fitted.size[1] // 16, fitted.size[0] // 16]]
            assert rule.image_tokens(w, h) == (fitted.size[0] // 32) * (fitted.size[1] // 32)


def test_legacy_min_max_pixels_configs_and_bad_processors(tmp_path: Path) -> None:
    legacy = {k: v for k, v in QWEN3_VL_8B.items() if k != "size"} | {
        "min_pixels": 3136,
        "max_pixels": 1003520,
    }
    ip = _saved_image_processor(tmp_path, legacy)
    assert processor_pixel_rule(ip) == PixelRule(factor=32, min_pixels=3136, max_pixels=1003520)
    assert pixel_rule(ip, max_pixels=50_000, min_pixels=10).min_pixels == 32 * 32  # never below one cell
    with pytest.raises(ConfigError, match="below one 32x32 patch"):
        pixel_rule(ip, budget=1000)
    with pytest.raises(ConfigError, match="no patch_size/merge_size"):
        processor_pixel_rule(object())
