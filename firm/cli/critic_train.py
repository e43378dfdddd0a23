"""`firmctl critic train`: run critic SFT locally under torchrun (`--nproc N` processes)."""

from __future__ import annotations

import typer

from firm.cli._common import cli_errors, torchrun_env
from firm.cli.critic_cmd import app


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@cli_errors
def train_cmd(
    ctx: typer.Context,
    config: str = typer.Option(
        ..., "--config", help="recipe YAML path or shipped recipe (firmctl recipes ls)"
    ),
    nproc: int = typer.Option(1, "--nproc", help="local processes (torchrun --nproc_per_node)"),
    resume: str | None = typer.Option(None, "--resume", help="auto | none | checkpoint URI"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="a fresh run replaces the run's existing checkpoints, run folder and export",
    ),
) -> None:
    """Train a critic: `firmctl critic train --config critic/tiny_cpu --nproc 2 optim.lr=2e-5` (key=value overrides).

    The config and the world size are checked here first, so mistakes fail before any process starts.
    """
    from firm.critic.sft_config import load_sft_config, preflight
    from firm.launch.local import run_local

    overrides = list(ctx.args)
    if resume is not None:
        overrides.append(f"resume={resume}")
    cfg = load_sft_config(config, overrides)
    preflight(cfg, nproc, overwrite=overwrite)
    code = run_local("firm.critic.sft", ["--config", config, *overrides], nproc, env=torchrun_env())
    if code != 0:
        raise typer.Exit(code)
