"""A learnable critic SFT dataset from known-answer synthetic items (tests, quickstart, benchmarks)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from firm.curation.dataset import CriticSFTRow, write_sft_dataset
from firm.curation.synthetic import synthetic_edit_items, synthetic_gen_items
from firm.errors import FirmError, InputError


def _split(i: int, n: int, val_fraction: float) -> str:
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    return "val" if i >= n - n_val else "train"


def synthetic_sft_rows(
    *,
    n_edit: int = 0,
    n_gen: int = 0,
    axes: Sequence[str] = ("execution", "consistency", "instruction"),
    val_fraction: float = 0.1,
    seed: int = 0,
    size: int = 64,
    requested: int | None = None,
) -> Iterator[tuple[CriticSFTRow, dict[str, Any]]]:
    """(row, images) pairs: one row per (item, axis) for the edit axes and gen `instruction` in `axes`.

    The last `val_fraction` of the items (at least one when > 0) form the val split, so val never shares an item
    with train. `requested` fixes the red squares asked for in edits (see `synthetic_edit_items`).
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unknown = set(axes) - {"execution", "consistency", "instruction"}
    if unknown:
        raise InputError(f"synthetic data has no known scores for axes {sorted(unknown)}")
    edit_axes = [a for a in axes if a in ("execution", "consistency")]
    if n_edit and edit_axes:
        for i, item in enumerate(synthetic_edit_items(n_edit, seed=seed, size=size, requested=requested)):
            src, edt = f"{item.id}-source.png", f"{item.id}-edited.png"
            images = {src: item.source, edt: item.edited}
            for axis in edit_axes:
                row = CriticSFTRow(
                    id=item.id,
                    task="edit",
                    axis=axis,  # type: ignore[arg-type]
                    images=[f"images/{src}", f"images/{edt}"],
                    instruction=item.instruction,
                    target=item.target(axis),
                    score=item.score(axis),
                    split=_split(i, n_edit, val_fraction),  # type: ignore[arg-type]
                )
                yield row, images
    if n_gen and "instruction" in axes:
        for i, item in enumerate(synthetic_gen_items(n_gen, seed=seed, size=size)):
            name = f"{item.id}.png"
            row = CriticSFTRow(
                id=item.id,
                task="gen",
                axis="instruction",
                images=[f"images/{name}"],
                prompt=item.prompt,
                target=item.target(),
                score=item.instruction,
                split=_split(i, n_gen, val_fraction),  # type: ignore[arg-type]
            )
            yield row, {name: item.image}


def write_synthetic_sft_dataset(out: str | Path, *, name: str = "synthetic", **kwargs: Any) -> Path | str:
    """Write (local dir) or publish (URI) a synthetic SFT dataset; kwargs as in `synthetic_sft_rows`."""
    return write_sft_dataset(name, synthetic_sft_rows(**kwargs), out)


def main(argv: list[str] | None = None) -> int:
    """`python -m firm.curation.synthetic_sft OUT [--n-edit N] [--n-gen N] [--axes a,b] ...`"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m firm.curation.synthetic_sft", description=__doc__)
    p.add_argument("out", help="local directory or file:// / s3:// URI to publish to")
    p.add_argument("--n-edit", type=int, default=240)
    p.add_argument("--n-gen", type=int, default=0)
    p.add_argument("--axes", default="execution", help="comma-separated: execution,consistency,instruction")
    p.add_argument(
        "--requested", type=int, default=None, help="fix the red squares each edit asks for (1..4)"
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args(argv)
    try:
        out = write_synthetic_sft_dataset(
            a.out, n_edit=a.n_edit, n_gen=a.n_gen, axes=a.axes.split(","), requested=a.requested,
            val_fraction=a.val_fraction, seed=a.seed, size=a.size,
        )  # fmt: skip
    except FirmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
