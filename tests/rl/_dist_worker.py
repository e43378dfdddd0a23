"""A process of the multi-rank parity test (`test_parity.py`): one RL step of a tiny run under real gloo.

Spawned 4 times: all 4 processes train one step as a 4-rank world, then ranks 0 and 1 train the same step again as a
2-rank world (one set of interpreter start-ups for both world sizes). Rank 0 of each world writes the trainable LoRA,
the parameter EMA, the gradient the optimizer step was taken with and the optimizer-step count to
`<out>/world-<W>.safetensors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STEPS = 1


def record_grads(trainer: Any) -> list[Any]:
    """Keep the gradients each optimizer step is taken with (after the all-reduce and clipping)."""
    grads: list[Any] = []
    step = trainer.optimizer.step

    def recording(*args: Any, **kwargs: Any) -> Any:
        grads[:] = [p.grad.detach().clone() for p in trainer.params]
        return step(*args, **kwargs)

    trainer.optimizer.step = recording
    return grads


def run_step(config: dict[str, Any], out: Path, world: int, rank: int) -> None:
    import torch
    from safetensors.torch import save_file

    from firm.rl import lora
    from firm.rl.config import config_from_dict
    from firm.rl.trainer import Trainer

    cfg = config_from_dict({**config, "output_uri": str(out / f"run-{world}-{rank}")})
    trainer = Trainer(cfg)
    grads = record_grads(trainer)
    trainer.train_step()
    if rank == 0:
        state = {f"grad.{i}": g for i, g in enumerate(grads)}
        state |= {
            f"trained.{i}": p.detach().clone()
            for i, p in enumerate(lora.trainable_params(trainer.policy.transformer))
        }
        state |= {f"ema.{i}": t for i, t in enumerate(trainer.ema.state())}  # type: ignore[union-attr]
        state["optimizer_steps"] = torch.tensor([trainer.optimizer_steps])
        save_file(state, str(out / f"world-{world}.safetensors"))
    trainer.metrics.close()
    trainer._pool.shutdown(wait=True)


def main(rank: int, config: dict[str, Any], out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    root = Path(out)
    dist.init_process_group("gloo", init_method=f"file://{root / 'pg-4'}", rank=rank, world_size=4)
    run_step(config, root, 4, rank)
    dist.barrier()
    dist.destroy_process_group()
    if rank < 2:
        dist.init_process_group("gloo", init_method=f"file://{root / 'pg-2'}", rank=rank, world_size=2)
        run_step(config, root, 2, rank)
        dist.destroy_process_group()
