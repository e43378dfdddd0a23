"""`firmctl bench make-synthetic`: a small FIRM-Bench with known answers, from `firm.curation.synthetic`.

The images are drawn so that the score can be read off the pixels (red squares asked for vs drawn; unrelated shapes
changed), so the "human" score is exact: a critic trained on the same recipe beats a random one on it, and the
whole bench pipeline (run → predictions → report) can be exercised without human labels.

`n` items per task: `n` edit items (even positions judged on execution, odd on consistency; ids keep the axis as a
suffix) and `n` generation items (alternately easy and hard). Written in our bench layout (see `firm.bench.loaders`).
"""

from __future__ import annotations

from pathlib import Path

from firm.bench.loaders import Bench, write_bench
from firm.bench.records import BenchItem
from firm.errors import InputError
from firm.storage.base import atomic_path


def _save(img, path: Path) -> None:  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def make_synthetic_bench(
    out_dir: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 64,
    edit_axes: tuple[str, ...] = ("execution", "consistency"),
    n_gen: int | None = None,
    requested: int | None = None,
) -> Bench:
    """Write a synthetic bench of `n` edit + `n_gen` (default `n`) gen items into `out_dir` and return it.

    Edit items cycle through `edit_axes`; `requested` fixes the red squares each edit asks for (as in the SFT data
    of `firm.curation.synthetic_sft`), so a bench can match a critic's training distribution.
    """
    from firm.curation.synthetic import synthetic_edit_items, synthetic_gen_items

    if n < 0 or (n == 0 and not n_gen):
        raise InputError(f"--n must be >= 1 (or 0 with generation items only), got {n}")
    bad = set(edit_axes) - {"execution", "consistency"}
    if not edit_axes or bad:
        raise InputError(f"edit axes must be execution and/or consistency, got {list(edit_axes)}")
    from firm.storage.base import ensure_dir

    out = Path(out_dir)
    ensure_dir(out, "--out")  # a clear reason when it cannot be created
    items: list[BenchItem] = []
    for i, it in enumerate(synthetic_edit_items(n, seed=seed, size=size, requested=requested) if n else []):
        axis = edit_axes[i % len(edit_axes)]
        src, dst = f"images/edit/{it.id}_source.png", f"images/edit/{it.id}_edited.png"
        _save(it.source, out / src)
        _save(it.edited, out / dst)
        items.append(
            BenchItem(
                id=f"{it.id}:{axis}",
                task="edit",
                axis=axis,
                images=[src, dst],
                instruction=it.instruction,
                human_score=it.score(axis),
                source="synthetic",
            )
        )
    n_gen = n if n_gen is None else n_gen
    gen_items = synthetic_gen_items(n_gen, seed=seed, size=size) if n_gen > 0 else []
    for it in gen_items:
        ref = f"images/gen/{it.id}.png"
        _save(it.image, out / ref)
        items.append(
            BenchItem(
                id=it.id,
                task="gen",
                axis="instruction",
                difficulty=it.difficulty,
                images=[ref],
                prompt=it.prompt,
                human_score=it.instruction,
                source="synthetic",
            )
        )
    write_bench(out, items)
    return Bench(root=out.resolve(), items=items)


def publish_synthetic_bench(n: int, *, seed: int = 1000, size: int = 112, requested: int | None = 4) -> str:
    """A synthetic editing bench published once under a content-addressed URI (`<datasets>/synthetic/bench-<hash>`)
    and reused by later runs with the same parameters (what a pipeline's bench step uses for `synthetic`)."""
    import hashlib
    import json
    import tempfile

    from firm.bench.loaders import publish_bench
    from firm.config import get_settings
    from firm.storage import is_published

    params = {"n": n, "seed": seed, "size": size, "requested": requested}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    uri = f"{get_settings().bucket_uris()['datasets']}/synthetic/bench-{digest}"
    if not is_published(uri):
        with tempfile.TemporaryDirectory(prefix="firm-bench-") as tmp:
            make_synthetic_bench(tmp, n, seed=seed, size=size, n_gen=0, requested=requested)
            publish_bench(tmp, uri)
    return uri
