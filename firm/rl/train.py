"""Entrypoint: `python -m firm.rl.train --config CONFIG [--resume auto|none|URI] [key=value ...]`.

Reads the standard torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT — what torchrun and
a PyTorchJob set), so the same command runs on one CPU, under `torchrun --nproc_per_node N` and on a cluster.
CONFIG is a YAML path or a shipped recipe name (e.g. `rl/tiny_sd3_nft`). Errors print one `error: ...` line.

Exit codes: 0 completed (summary `status: completed`), 1 an error, `firm.rl.alarms.ALARM_EXIT_CODE` (4) when a
reward-hacking alarm stopped the run (`audit.alarm: stop`): the `error: stopped_by_alarm: ...` line names the alarm,
its step and values, and rank 0's summary has `status: stopped_by_alarm`, the alarm's evidence and the last good
checkpoint. Both codes are below 128, so the Training Operator does not restart the job.
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
from firm.rl.alarms import ALARM_EXIT_CODE, STOPPED_BY_ALARM, AlarmStop

if TYPE_CHECKING:
    from firm.rl.config import RLConfig


def config_path(name: str) -> Path:
    """A recipe YAML path, a shipped recipe name (`rl/tiny_sd3_nft`) or a file:// / s3:// URI → a local file."""
    from firm.recipes import resolve_config

    return resolve_config(name)


def preflight(cfg: RLConfig, world_size: int, *, overwrite: bool = False) -> None:
    """What can be checked before any training process starts (`firmctl rl train`), so a mistake is one `error:`
    line instead of one per rank: prompts per step (and their split over updates) against the world size, object-store credentials for every
    s3:// location, a local policy directory, the prompt file (read and validated), and that a fresh run does
    not write over an existing run's checkpoints."""
    from firm.rl.config import check_world_size
    from firm.rl.data import load_prompts
    from firm.rl.policies.pretrained import resolve_pretrained
    from firm.storage import check_store_access
    from firm.storage.targets import check_target, clear_target

    # the shared rule, first (cheap): a fresh run into anything non-empty is refused; --overwrite clears it last
    fresh = cfg.checkpoint.resume == "none"
    replace = fresh and check_target(
        cfg.output_uri, "output_uri", overwrite=overwrite, resume="--resume auto"
    )
    check_world_size(cfg, world_size)
    check_store_access(
        {
            "policy.uri": cfg.policy.uri,
            "output_uri": cfg.output_uri,
            "data.prompts": cfg.data.prompts,
            "reward.critic_uri": cfg.reward.critic_uri,
            "audit.bench": cfg.audit.bench,
        }
    )
    if not cfg.policy.uri.startswith(("s3://", "file://")):
        resolve_pretrained(cfg.policy.uri)  # a missing local directory (HF ids pass)
    load_prompts(cfg.data.prompts, cfg.task, cfg.data.max_prompt_chars)
    if cfg.audit.bench:  # the audit set: read and validated (items of the run's task)
        from firm.rl.audit import load_audit_set

        load_audit_set(cfg.audit.bench, cfg.task, cfg.audit.max_items)
    check_reward_reachable(cfg)
    if replace:
        clear_target(cfg.output_uri)


def check_reward_reachable(cfg: RLConfig, timeout: float = 3.0) -> None:
    """A Triton reward service (`reward.kind=triton`) must accept connections before the first rollout: an
    unreachable endpoint is one `error:` line here, not retries inside training. Any one reachable endpoint is
    enough (the client fails over)."""
    if cfg.reward.kind != "triton":
        return
    import socket

    from firm.config import get_settings
    from firm.errors import ConfigError

    spec = cfg.reward.url or get_settings().triton_url
    what = "reward.url" if cfg.reward.url else "FIRM_TRITON_URL"
    causes = []
    for ep in [e.strip() for e in str(spec).split(",") if e.strip()]:
        host, _, port = ep.split("://", 1)[-1].rstrip("/").rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
                return
        except ValueError:
            causes.append(f"{ep}: expected host:port")
        except OSError as exc:
            causes.append(f"{ep}: {exc.strerror or type(exc).__name__}")
    raise ConfigError(
        f"{what}={spec}: no reward endpoint is reachable ({'; '.join(causes) or 'none given'}); start the reward "
        "service (firmctl serve start) or point reward.url at it"
    )


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    from firm.processes import before_process_group

    local = int(os.environ.get("LOCAL_RANK", "0"))
    before_process_group()
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
    from firm.processes import end_process_group

    quiet_libraries()
    with contextlib.redirect_stdout(sys.stderr):
        try:
            code, summary = _run(argv)
        finally:  # once the run's frame is gone: its trainer holds the group's backend until then
            end_process_group()
    if summary is not None:
        out.write(json.dumps(summary) + "\n")
        out.flush()
    return code


def _termination_message(msg: str) -> None:
    """In a pod, the kubelet shows this as the container's termination message (`firmctl job status`)."""
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return
    with contextlib.suppress(OSError):
        Path("/dev/termination-log").write_text(msg[:4000])


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

        if rank == 0:
            check_reward_reachable(cfg)  # before any rollout (jobs and pipelines skip the CLI's preflight)
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
                "status": "completed",
                "steps": trainer.step,
                "world_size": world,
                "rank_divergence": trainer.rank_divergence,
                "output_uri": cfg.output_uri,
                "last": last,
                "audit": trainer.last_audit,
                "alarms": [a.to_json() for a in trainer.alarms.fired],
            }
    except AlarmStop as exc:
        from firm.logs import print_error

        if rank == 0:
            print_error(exc)
            _termination_message(str(exc))
            summary = {
                "status": STOPPED_BY_ALARM,
                "alarm": exc.alarm.to_json(),
                "checkpoint": exc.checkpoint,
                "exit_code": ALARM_EXIT_CODE,
            }
        return ALARM_EXIT_CODE, summary
    except FirmError as exc:
        from firm.logs import print_error

        print_error(exc)  # once for all ranks
        return 1, None
    return 0, summary


if __name__ == "__main__":
    sys.exit(main())
