"""Which samples a curated dataset keeps and where they go: deterministic train/val split by id hash, histogram
balancing to a target score distribution, and the paper's release mix.

Both are functions of ids only (never of processing order or time), so reruns and resumed runs agree.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Protocol

from firm.errors import InputError

# Execution samples per score in the released FIRM-Edit data, as the paper reports them (scores 5..1, thousands).
PAPER_EXECUTION_MIX: dict[int, float] = {5: 50.0, 4: 16.0, 3: 53.0, 2: 22.0, 1: 50.0}
UNIFORM: dict[int, float] = {k: 1.0 for k in range(1, 6)}
PRESETS = {"paper": PAPER_EXECUTION_MIX, "uniform": UNIFORM}


def unit_hash(key: str, salt: str = "") -> float:
    """A stable number in [0, 1) for `key`."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(item_id: str, val_fraction: float, seed: int = 0) -> str:
    """`val` for about `val_fraction` of the ids (by hash; both axes of an item land together), else `train`."""
    return "val" if unit_hash(item_id, f"split-{seed}") < val_fraction else "train"


def parse_target(spec: str | Mapping[int, float]) -> dict[int, float]:
    """A target distribution: a preset name (`paper`, `uniform`), `5:50,4:16,...`, or a mapping; normalised."""
    if isinstance(spec, str):
        if spec in PRESETS:
            raw: Mapping[int, float] = PRESETS[spec]
        else:
            try:
                raw = {
                    int(k): float(v) for k, v in (part.split(":") for part in spec.split(",") if part.strip())
                }
            except ValueError:
                raise InputError(
                    f"balance target {spec!r}: expected a preset ({', '.join(PRESETS)}) or 'score:weight,...'"
                ) from None
    else:
        raw = {int(k): float(v) for k, v in spec.items()}
    if not raw or any(k not in range(1, 6) for k in raw) or any(v < 0 for v in raw.values()):
        raise InputError(f"balance target {spec!r}: scores must be 1..5 with weights >= 0")
    total = sum(raw.values())
    if total <= 0:
        raise InputError(f"balance target {spec!r}: the weights sum to 0")
    return {k: v / total for k, v in sorted(raw.items())}


class Scored(Protocol):
    id: str
    score: int


def balance(
    samples: Sequence[Scored], target: Mapping[int, float], seed: int = 0
) -> tuple[list[int], list[int]]:
    """(indices kept, indices dropped) so that the kept scores follow `target` as closely as the counts allow.

    The largest total N with `round(N·p_k) <= count_k` for every score k is kept (scores the target gives 0 are all
    dropped); within a score, the samples with the smallest id hashes are kept.
    """
    by_score: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_score[s.score].append(i)
    ratios = [len(by_score.get(k, [])) / p for k, p in target.items() if p > 0]
    n_total = math.floor(min(ratios)) if ratios else 0
    while n_total > 0 and any(round(n_total * p) > len(by_score.get(k, [])) for k, p in target.items()):
        n_total -= 1
    keep: list[int] = []
    for k, idx in by_score.items():
        want = round(n_total * target.get(k, 0.0))
        ranked = sorted(idx, key=lambda i: unit_hash(samples[i].id, f"balance-{seed}"))
        keep += ranked[:want]
    kept = set(keep)
    return sorted(kept), [i for i in range(len(samples)) if i not in kept]
