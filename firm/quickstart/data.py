"""The quickstart's source data, written under the work directory (what a team would bring as files or URIs).

- curation manifests: synthetic edits (`{"id", "source", "edited", "instruction"}`) or generations
  (`{"id", "prompt", "image"}`) as PNG files plus a JSONL manifest — the input format of `firmctl data curate-edit` /
  `curate-gen` and of the pipelines' `curation_input`;
- a held-out FIRM-Bench set (other seeds than the curation data), published to the object store;
- RL prompt files for training and, from other seeds, held-out prompts for the before/after evaluation: edit
  instructions with their synthetic source images (the critic's own world), or generation prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from firm.curation.synthetic import synthetic_edit_items, synthetic_gen_items

REQUESTED = 4  # every edit asks for four red squares: execution = 1 + squares drawn, uniform over 1..5
CURATION_SEED, BENCH_SEED, RL_SEED, RL_EVAL_SEED = 0, 1000, 2000, 3000


def write_edit_manifest(out: Path, n: int, size: int, seed: int = CURATION_SEED) -> Path:
    """`n` synthetic edit pairs as PNGs and `manifest.jsonl` (paths relative to the manifest)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in synthetic_edit_items(n, seed=seed, size=size, requested=REQUESTED):
        src, edt = f"{it.id}-source.png", f"{it.id}-edited.png"
        it.source.save(out / src)
        it.edited.save(out / edt)
        lines.append(json.dumps({"id": it.id, "source": src, "edited": edt, "instruction": it.instruction}))
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def write_gen_manifest(out: Path, n: int, size: int, seed: int = CURATION_SEED) -> Path:
    """`n` synthetic generations as PNGs and `manifest.jsonl`."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in synthetic_gen_items(n, seed=seed, size=size):
        img = f"{it.id}.png"
        it.image.save(out / img)
        lines.append(json.dumps({"id": it.id, "prompt": it.prompt, "image": img}))
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def publish_bench(out: Path, uri: str, task: str, n: int, size: int) -> str:
    """A held-out synthetic bench (`n` items; editing items alternate execution / consistency) at `uri`."""
    from firm.bench.loaders import publish_bench as publish
    from firm.bench.synthetic import make_synthetic_bench

    make_synthetic_bench(
        out, n if task == "edit" else 0, seed=BENCH_SEED, size=size, n_gen=n if task == "gen" else 0,
        requested=REQUESTED,
    )  # fmt: skip
    publish(out, uri)
    return uri


_GEN_SUFFIXES = ["", " on a grey background", " in a two by two grid", ", nothing else", " on a plain canvas",
                 " in the cells of a grid", " and no other shapes", ", flat colours"]  # fmt: skip


def gen_prompts(n: int, *, held_out: bool = False) -> list[str]:
    """`n` distinct red-square prompts (counts 1..4 × phrasings); `held_out` uses phrasings training never sees."""
    suffixes = _GEN_SUFFIXES[4:] if held_out else _GEN_SUFFIXES[:4]
    out = []
    for suffix in suffixes:
        for k in range(1, 5):
            out.append(f"A picture of {k} red {'square' if k == 1 else 'squares'}{suffix}.")
    return out[:n]


def write_rl_prompts(out: Path, task: str, n: int, size: int, seed: int) -> Path:
    """An RL prompt file: edit → `prompts.jsonl` (instruction + synthetic source image), gen → `prompts.txt`."""
    out.mkdir(parents=True, exist_ok=True)
    if task == "gen":  # distinct prompts (RL refuses duplicates); held-out files use other phrasings
        path = out / "prompts.txt"
        path.write_text("".join(f"{p}\n" for p in gen_prompts(n, held_out=seed == RL_EVAL_SEED)))
        return path
    lines = []
    for it in synthetic_edit_items(n, seed=seed, size=size, requested=REQUESTED):
        name = f"{it.id}-source.png"
        it.source.save(out / name)
        lines.append(json.dumps({"instruction": it.instruction, "image": name}))
    path = out / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
