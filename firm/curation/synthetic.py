"""Known-answer synthetic critic data: images whose scores can be read off the pixels.

Used to train tiny critics that must *learn something* (critic SFT tests, quickstart) and to exercise FIRM-Bench
end to end without human labels. Every image is a `size`×`size` canvas split into a 2×2 grid of cells:

- *Edit* items: the instruction asks for `requested` red squares (1..4); the edited image draws `drawn` of them
  (0..requested), one per cell, so **execution** = 1 + round(4·drawn/requested) (all drawn → 5, none → 1). Each cell
  also holds a small unrelated shape (blue/green/yellow/purple circle); the edit alters `changed` cells (0..4) beyond
  the request — it repaints the cell's background in a tint and recolours or removes its shape — so
  **consistency** = 5 − changed. The altered region is a whole cell (several vision tokens even at 112 px), so a
  tiny critic can learn both axes; a change confined to the small shape alone is too fine for one.
- *Gen* items: the prompt asks for `requested` red squares (1..4); the image shows `drawn` (0..4), so
  **instruction** = 5 − |drawn − requested|. `hard` items add unrelated shapes around the squares; `easy` ones don't.

Each item carries `target(axis)`: the exact assistant text in the student rubric's answer format (the SFT target).
Generation is deterministic in `seed`.
"""

from __future__ import annotations

import json
import random
from typing import Literal

from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from firm.errors import InputError

Difficulty = Literal["easy", "hard"]

BACKGROUND = (236, 236, 236)
RED = (220, 30, 30)
# Backgrounds an unrequested edit paints a cell with (consistency damage over a whole cell).
TINTS: list[tuple[int, int, int]] = [(20, 40, 160), (10, 110, 40), (40, 40, 40), (110, 20, 130)]
DISTRACTOR_COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 80, 220),
    "green": (30, 170, 60),
    "yellow": (230, 200, 30),
    "purple": (140, 50, 170),
}
N_CELLS = 4


class _Item(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)


class SyntheticEditItem(_Item):
    """An image edit with known execution and consistency scores (1..5)."""

    id: str
    source: Image.Image
    edited: Image.Image
    instruction: str
    execution: int = Field(ge=1, le=5)
    consistency: int = Field(ge=1, le=5)
    requested: int = Field(ge=1, le=N_CELLS, description="red squares the instruction asks for")
    drawn: int = Field(ge=0, le=N_CELLS, description="red squares present in the edited image")
    changed: int = Field(ge=0, le=N_CELLS, description="unrelated shapes altered by the edit")

    def score(self, axis: str) -> int:
        if axis == "execution":
            return self.execution
        if axis == "consistency":
            return self.consistency
        raise InputError(f"edit item {self.id}: unknown axis {axis!r}; expected execution or consistency")

    def reasoning(self, axis: str) -> str:
        if axis == "execution":
            return f"{self.drawn} of {self.requested} requested red squares were added."
        if axis == "consistency":
            return f"{self.changed} unrelated regions changed."
        raise InputError(f"edit item {self.id}: unknown axis {axis!r}; expected execution or consistency")

    def target(self, axis: str) -> str:
        """The assistant answer in the edit rubric's format: `{"reasoning": "...", "score": [k]}`."""
        return json.dumps({"reasoning": self.reasoning(axis), "score": [self.score(axis)]})


class SyntheticGenItem(_Item):
    """A generated image with a known instruction-following score (1..5)."""

    id: str
    image: Image.Image
    prompt: str
    instruction: int = Field(ge=1, le=5)
    difficulty: Difficulty
    requested: int = Field(ge=1, le=N_CELLS)
    drawn: int = Field(ge=0, le=N_CELLS)

    def score(self, axis: str = "instruction") -> int:
        if axis != "instruction":
            raise InputError(f"gen item {self.id}: only the instruction axis has a known score, not {axis!r}")
        return self.instruction

    def target(self, axis: str = "instruction") -> str:
        """The assistant answer in the gen rubric's format, ending with the rating line and `\\boxed{k}`."""
        k = self.score(axis)
        return (
            f"Requirements: {self.requested} red squares.\n"
            f"Analysis: the image shows {self.drawn} red squares.\n"
            f"Final Alignment Rating: {k}\n\\boxed{{{k}}}"
        )


def execution_score(requested: int, drawn: int) -> int:
    """1 + round(4·drawn/requested): all requested squares → 5, none → 1."""
    return 1 + round(4 * drawn / requested)


def instruction_score(requested: int, drawn: int) -> int:
    """5 − |drawn − requested| (counts in 0..4, so the score stays in 1..5)."""
    return 5 - abs(drawn - requested)


def _cells(size: int) -> list[tuple[int, int, int]]:
    """(x0, y0, cell) of the 2×2 grid cells."""
    c = size // 2
    return [(0, 0, c), (c, 0, c), (0, c, c), (c, c, c)]


def _draw_square(draw: ImageDraw.ImageDraw, cell: tuple[int, int, int]) -> None:
    x0, y0, c = cell
    m = max(1, round(c * 0.25))
    draw.rectangle([x0 + m, y0 + m, x0 + c - m - 1, y0 + c - m - 1], fill=RED)


def _draw_distractor(
    draw: ImageDraw.ImageDraw, cell: tuple[int, int, int], colour: tuple[int, int, int]
) -> None:
    x0, y0, c = cell
    r = max(2, c // 10)
    cx, cy = x0 + c - r - 1, y0 + r + 1  # top-right corner of the cell, clear of the square
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)


def _check(n: int, size: int) -> None:
    if n < 0:
        raise InputError(f"number of synthetic items must be >= 0, got {n}")
    if size < 16:
        raise InputError(f"synthetic image size must be >= 16 pixels, got {size}")


def synthetic_edit_items(
    n: int, seed: int = 0, size: int = 64, *, requested: int | None = None
) -> list[SyntheticEditItem]:
    """`n` edit items with known execution/consistency scores.

    `requested` fixes how many red squares every instruction asks for (then execution = 1 + drawn, uniform over
    1..5 when requested=4); by default it varies in 1..4.
    """
    _check(n, size)
    if requested is not None and not 1 <= requested <= N_CELLS:
        raise InputError(f"requested red squares must be in 1..{N_CELLS}, got {requested}")
    rng = random.Random(f"edit-{seed}")
    cells = _cells(size)
    names = list(DISTRACTOR_COLOURS)
    items: list[SyntheticEditItem] = []
    for i in range(n):
        req = requested if requested is not None else rng.randint(1, N_CELLS)
        drawn = rng.randint(0, req)
        changed = rng.randint(0, N_CELLS)
        colours = [rng.choice(names) for _ in cells]
        source = Image.new("RGB", (size, size), BACKGROUND)
        sd = ImageDraw.Draw(source)
        for cell, name in zip(cells, colours, strict=True):
            _draw_distractor(sd, cell, DISTRACTOR_COLOURS[name])
        edited = Image.new("RGB", (size, size), BACKGROUND)
        ed = ImageDraw.Draw(edited)
        changed_cells = set(rng.sample(range(N_CELLS), changed))
        for j, (cell, name) in enumerate(zip(cells, colours, strict=True)):
            if j in changed_cells:
                x0, y0, c = cell
                ed.rectangle([x0, y0, x0 + c - 1, y0 + c - 1], fill=rng.choice(TINTS))
                if rng.random() < 0.5:
                    continue  # removed
                name = rng.choice([c for c in names if c != name])  # recoloured
            _draw_distractor(ed, cell, DISTRACTOR_COLOURS[name])
        for j in rng.sample(range(N_CELLS), drawn):
            _draw_square(ed, cells[j])
        noun = "square" if req == 1 else "squares"
        items.append(
            SyntheticEditItem(
                id=f"syn-edit-{seed}-{i:05d}",
                source=source,
                edited=edited,
                instruction=f"Add {req} red {noun}.",
                execution=execution_score(req, drawn),
                consistency=5 - changed,
                requested=req,
                drawn=drawn,
                changed=changed,
            )
        )
    return items


def synthetic_gen_items(n: int, seed: int = 0, size: int = 64) -> list[SyntheticGenItem]:
    """`n` generation items with known instruction scores; alternately easy (no distractors) and hard."""
    _check(n, size)
    rng = random.Random(f"gen-{seed}")
    cells = _cells(size)
    names = list(DISTRACTOR_COLOURS)
    items: list[SyntheticGenItem] = []
    for i in range(n):
        req = rng.randint(1, N_CELLS)
        drawn = rng.randint(0, N_CELLS)
        difficulty: Difficulty = "easy" if i % 2 == 0 else "hard"
        image = Image.new("RGB", (size, size), BACKGROUND)
        d = ImageDraw.Draw(image)
        if difficulty == "hard":
            for cell in cells:
                _draw_distractor(d, cell, DISTRACTOR_COLOURS[rng.choice(names)])
        for j in rng.sample(range(N_CELLS), drawn):
            _draw_square(d, cells[j])
        noun = "square" if req == 1 else "squares"
        items.append(
            SyntheticGenItem(
                id=f"syn-gen-{seed}-{i:05d}",
                image=image,
                prompt=f"A picture of {req} red {noun}.",
                instruction=instruction_score(req, drawn),
                difficulty=difficulty,
                requested=req,
                drawn=drawn,
            )
        )
    return items
