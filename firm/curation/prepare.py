"""Prepare the critic SFT dataset of a run: what a pipeline's `curate` step calls.

`prepare_sft_dataset(source)`:
- `synthetic` → the learnable known-answer dataset of `firm.curation.synthetic_sft` (both editing axes), published
  once under a content-addressed URI (`<datasets>/synthetic/sft-<hash of its parameters>`): a rerun with the same
  parameters reuses it;
- a dataset URI or directory → opened and validated (every row, every image) and used as it is: published datasets
  are immutable, so the URI itself is the address.

Teacher-based curation (difference-first editing, plan-then-score generation) plugs in here as further sources.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from firm.curation.dataset import SFTDataset, read_sft_dataset

SYNTHETIC = "synthetic"


def dataset_stats(ds: SFTDataset) -> dict[str, Any]:
    """Row counts per split and per (task, axis, score), and the rows the reader skipped."""
    per: Counter[str] = Counter(f"{r.task}/{r.axis}/{r.score}" for r in ds.rows)
    return {
        "splits": ds.counts(),
        "by_task_axis_score": dict(sorted(per.items())),
        "skipped": len(ds.skipped),
    }


def prepare_sft_dataset(
    source: str, *, n_items: int = 400, seed: int = 0, size: int = 112, requested: int = 4
) -> tuple[str, dict[str, Any]]:
    """(dataset URI, stats) for `source` (see the module docstring)."""
    from firm.config import get_settings
    from firm.storage import read_manifest

    uri = source
    if source == SYNTHETIC:
        params = {"n_edit": n_items, "axes": ["execution", "consistency"], "requested": requested,
                  "size": size, "val_fraction": 0.05, "seed": seed}  # fmt: skip
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
        uri = f"{get_settings().bucket_uris()['datasets']}/synthetic/sft-{digest}"
        try:
            read_manifest(uri)
        except Exception:
            from firm.curation.synthetic_sft import write_synthetic_sft_dataset

            write_synthetic_sft_dataset(uri, **params)  # type: ignore[arg-type]
    ds = read_sft_dataset(uri, on_bad_row="reject")
    return uri, dataset_stats(ds)
