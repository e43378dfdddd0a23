"""Small real test images drawn with PIL: coloured shapes on a background, optional text.

Used by tests, benchmarks and the quickstart so that critics see real RGB pictures (and edits of them) without
any dataset download. Everything is deterministic for a given argument set.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageDraw

Shape = Literal["square", "circle", "triangle"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
    "black": (10, 10, 10),
    "white": (250, 250, 250),
    "grey": (128, 128, 128),
}


def _rgb(colour: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(colour, tuple):
        return colour
    try:
        return COLOURS[colour]
    except KeyError:
        raise ValueError(f"unknown colour {colour!r}; known: {', '.join(COLOURS)}") from None


def draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: Shape,
    box: tuple[int, int, int, int],
    colour: str | tuple[int, int, int],
) -> None:
    """Draw one filled shape inside `box` = (x0, y0, x1, y1)."""
    fill = _rgb(colour)
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: square, circle, triangle")


def shapes_image(
    shapes: Sequence[tuple[Shape, str]] = (("square", "red"),),
    size: tuple[int, int] = (64, 64),
    background: str | tuple[int, int, int] = "white",
    text: str | None = None,
) -> Image.Image:
    """An RGB picture with the given (shape, colour) items laid out left to right, and optional text at the bottom."""
    w, h = size
    img = Image.new("RGB", size, _rgb(background))
    draw = ImageDraw.Draw(img)
    n = max(len(shapes), 1)
    cell = w // n
    margin = max(cell // 8, 1)
    top, bottom = h // 8, h - (h // 3 if text else h // 8)
    side = min(cell - 2 * margin, bottom - top)
    for i, (shape, colour) in enumerate(shapes):
        x0 = i * cell + (cell - side) // 2
        y0 = top + (bottom - top - side) // 2
        draw_shape(draw, shape, (x0, y0, x0 + side, y0 + side), colour)
    if text:
        draw.text((2, h - h // 3 + 1), text, fill=(0, 0, 0))
    return img


def edit_pair(
    instruction_colour: str = "blue",
    source_colour: str = "red",
    shape: Shape = "square",
    size: tuple[int, int] = (64, 64),
) -> tuple[Image.Image, Image.Image, str]:
    """A (source, edited, instruction) triple where the edit recolours one shape."""
    src = shapes_image([(shape, source_colour)], size=size)
    dst = shapes_image([(shape, instruction_colour)], size=size)
    return src, dst, f"Make the {source_colour} {shape} {instruction_colour}."


def png_bytes(img: Image.Image) -> bytes:
    """Encode an image as PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
