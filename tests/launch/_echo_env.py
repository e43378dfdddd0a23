"""`python -m tests.launch._echo_env --config X [...]`: a stand-in entrypoint that records the torch.distributed
environment it was started with (one JSON file per rank in $ECHO_DIR), then joins a gloo all-reduce so that every
rank of every "node" proves it can reach the others."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
        "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "FIRM_JOB_NAME")  # fmt: skip


def main() -> int:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.ones(1)
    dist.all_reduce(t)
    rank = dist.get_rank()
    record = {k: os.environ.get(k) for k in KEYS} | {"sum": int(t.item()), "argv": sys.argv[1:]}
    Path(os.environ["ECHO_DIR"], f"rank-{rank}.json").write_text(json.dumps(record))
    sys.stdout.write(f"rank {rank} of {dist.get_world_size()} done")
    dist.barrier()
    sys.stdout.write("\n")
    sys.stdout.flush()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
