"""Entrypoint: `python -m firm.rl.train --config CONFIG [--resume auto|none|URI] [key=value ...]`.

Reads the standard torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT — what torchrun and
a PyTorchJob set), so the same command runs on one CPU, under `torchrun --nproc_per_node N` and on a cluster.
CONFIG is a YAML path or a shipped recipe name (e.g. `rl/tiny_sd3_nft`). Errors print one `error: ...` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from firm.errors import FirmError


def config_path(name: str) -> Path:
    """A recipe YAML path, a shipped recipe name (`rl/tiny_sd3_nft`) or a file:// / s3:// URI → a local file."""
    from firm.recipes import resolve_config

    return resolve_config(name)


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firm.rl.train", description=__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument(
        "--resume", default=None, help="auto | none | checkpoint URI (overrides checkpoint.resume)"
    )
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rank = 0
    try:
        from firm.rl.config import load_config

        overrides = list(args.overrides)
        if args.resume:
            overrides.append(f"checkpoint.resume={args.resume}")
        cfg = load_config(config_path(args.config), overrides)
        rank, world = _init_distributed()
        if cfg.device == "auto" and world > 1:
            import torch

            if torch.cuda.is_available():
                cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        from firm.rl.trainer import Trainer

        trainer = Trainer(cfg)
        results = trainer.train(progress=sys.stderr.isatty())
        if rank == 0:
            last = results[-1].metrics if results else {}
            print(
                json.dumps(
                    {
                        "steps": trainer.step,
                        "world_size": world,
                        "rank_divergence": trainer.rank_divergence,
                        "output_uri": cfg.output_uri,
                        "last": last,
                    }
                )
            )
    except FirmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort at exit
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
