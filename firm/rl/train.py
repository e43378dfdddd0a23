"""Entrypoint: `python -m firm.rl.train --config CONFIG [--resume auto|none|URI] [key=value ...]`.

Reads the standard torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT — what torchrun and
a PyTorchJob set), so the same command runs on one CPU, under `torchrun --nproc_per_node N` and on a cluster.
CONFIG is a YAML path or a shipped recipe name (e.g. `rl/tiny_sd3_nft`). Errors print one `error: ...` line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from firm.errors import FirmError

if TYPE_CHECKING:
    from firm.rl.config import RLConfig


def config_path(name: str) -> Path:
    """A recipe YAML path, a shipped recipe name (`rl/tiny_sd3_nft`) or a file:// / s3:// URI → a local file."""
    from firm.recipes import resolve_config

    return resolve_config(name)


def preflight(cfg: RLConfig, world_size: int) -> None:
    """What can be checked before any training process starts (`firmctl rl train`), so a mistake is one `error:`
    line instead of one per rank: prompts per step (and their split over updates) against the world size, object-store credentials for every
    s3:// location, a local policy directory, the prompt file (read and validated), and that a fresh run does
    not write over an existing run's checkpoints."""
    from firm.rl.checkpoint import check_fresh_output
    from firm.rl.config import check_world_size
    from firm.rl.data import load_prompts
    from firm.rl.policies.pretrained import resolve_pretrained
    from firm.storage import check_store_access

    check_world_size(cfg, world_size)
    check_store_access(
        {
            "policy.uri": cfg.policy.uri,
            "output_uri": cfg.output_uri,
            "data.prompts": cfg.data.prompts,
            "reward.critic_uri": cfg.reward.critic_uri,
        }
    )
    if not cfg.policy.uri.startswith(("s3://", "file://")):
        resolve_pretrained(cfg.policy.uri)  # a missing local directory (HF ids pass)
    load_prompts(cfg.data.prompts, cfg.task, cfg.data.max_prompt_chars)
    check_fresh_output(cfg.checkpoint.resume, cfg.output_uri)


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        # CUDA tensors (gradients) go over NCCL; the small CPU ones (a step's rewards, the metric sums) over gloo,
        # since NCCL has no CPU collectives
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    """Run; rank 0 prints the JSON summary on `stdout` (default: sys.stdout) and nothing else goes there: library
    output printed while the run goes is sent to stderr."""
    out = stdout if stdout is not None else sys.stdout
    from firm.logs import quiet_libraries

    quiet_libraries()
    with contextlib.redirect_stdout(sys.stderr):
        code, summary = _run(argv)
    if summary is not None:
        out.write(json.dumps(summary) + "\n")
        out.flush()
    return code


def _run(argv: list[str] | None) -> tuple[int, dict[str, Any] | None]:
    ap = argparse.ArgumentParser(prog="python -m firm.rl.train", description=__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument(
        "--resume", default=None, help="auto | none | checkpoint URI (overrides checkpoint.resume)"
    )
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rank = 0
    summary: dict[str, Any] | None = None
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
        t0 = time.perf_counter()
        results = trainer.train(progress=True)  # rank 0: a bar on a terminal, periodic lines elsewhere
        if rank == 0:
            from firm.progress import print_done

            mean = (results[-1].metrics if results else {}).get("reward/mean")
            print_done(
                f"RL, {trainer.step} steps" + (f" (last reward/mean {mean:.3f})" if mean is not None else ""),
                time.perf_counter() - t0, f"outputs in {cfg.output_uri}",
            )  # fmt: skip
            last = results[-1].metrics if results else {}
            summary = {
                "steps": trainer.step,
                "world_size": world,
                "rank_divergence": trainer.rank_divergence,
                "output_uri": cfg.output_uri,
                "last": last,
            }
    except FirmError as exc:
        from firm.logs import print_error

        print_error(exc)  # once for all ranks
        return 1, None
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort at exit
            pass
    return 0, summary


if __name__ == "__main__":
    sys.exit(main())
