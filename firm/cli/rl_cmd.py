"""`firmctl rl`: RL on diffusion policies with FIRM rewards."""

from __future__ import annotations

from pathlib import Path

import typer

from firm.cli._common import cli_errors, echo_json, result_stream, torchrun_env

app = typer.Typer(help="RL on diffusion policies with FIRM rewards.", no_args_is_help=True)


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@cli_errors
def train(
    ctx: typer.Context,
    config: str = typer.Option(
        ..., "--config", help="recipe YAML path or shipped name (e.g. rl/tiny_sd3_nft)"
    ),
    nproc: int = typer.Option(1, "--nproc", help="local processes (torchrun, DDP over prompts)"),
    resume: str | None = typer.Option(None, "--resume", help="auto | none | checkpoint URI"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="a fresh run replaces what is already at output_uri"
    ),
) -> None:
    """Train a policy with DiffusionNFT or Flow-GRPO. Extra `key=value` arguments override the config."""
    from firm.launch.local import run_local
    from firm.rl.config import load_config
    from firm.rl.train import config_path, preflight

    overrides = list(ctx.args)
    path = config_path(config)
    # validate here: bad configs fail before any process starts
    cfg = load_config(path, [*overrides, *([f"checkpoint.resume={resume}"] if resume else [])])
    preflight(cfg, nproc, overwrite=overwrite)
    args = ["--config", str(path), *(["--resume", resume] if resume else []), *overrides]
    if nproc == 1:
        from firm.rl.train import main

        code = main(args, stdout=result_stream())
    else:
        code = run_local("firm.rl.train", args, nproc, env=torchrun_env())
    if code:
        raise typer.Exit(code)


@app.command("sample")
@cli_errors
def sample(
    policy: str = typer.Option(..., "--policy", help="pipeline: HF id, local dir or file:// / s3:// URI"),
    prompt: list[str] = typer.Option(..., "--prompt", help="prompt (or edit instruction); repeatable"),
    out: Path = typer.Option(..., "--out", help="directory for the PNGs"),
    lora: str | None = typer.Option(None, "--lora", help="LoRA dir or URI (diffusers format)"),
    image: str | None = typer.Option(None, "--image", help="source image (editing policies)"),
    kind: str | None = typer.Option(
        None,
        "--kind",
        help="policy family: sd3 | qwen_edit | flux_kontext | flux2_klein | qwen_image | z_image "
        "(default: qwen_edit when --image is given, else sd3)",
    ),
    steps: int = typer.Option(40, "--steps"),
    resolution: int = typer.Option(512, "--resolution"),
    seed: int = typer.Option(0, "--seed"),
    max_sequence_length: int = typer.Option(256, "--max-sequence-length"),
    condition_pixels: int = typer.Option(
        384 * 384, "--condition-pixels", help="editing: VL-encoder pixel budget"
    ),
) -> None:
    """Sample images from a policy (optionally with a trained LoRA) and write them as PNGs."""
    from firm.rl.sample import sample_images

    paths = sample_images(
        policy_uri=policy,
        prompts=prompt,
        out_dir=out,
        lora_uri=lora,
        image=image,
        kind=kind,
        steps=steps,
        resolution=resolution,
        seed=seed,
        max_sequence_length=max_sequence_length,
        condition_pixels=condition_pixels,
    )
    echo_json({"images": [str(p) for p in paths]})


@app.command("report")
@cli_errors
def report(
    output_uri: str = typer.Argument(..., help="the run's output_uri (local path, file:// or s3://)"),
    out: Path | None = typer.Option(
        None, "--out", help="where to write the gallery (default: ./rl-audit-gallery.html)"
    ),
    open_: bool = typer.Option(False, "--open", help="also open it in a web browser"),
) -> None:
    """The run's critic audit: its rationale gallery (newest audit, alarms, the samples they flagged) written to a
    local HTML file, and as JSON the run's status (completed / stopped_by_alarm / running), the alarm with its
    evidence and the newest audit's numbers."""
    from firm.rl.report import ALARM, gallery_page, read_run_json, read_run_metrics

    html = gallery_page(output_uri, title=f"RL audit — {output_uri}")
    dest = (out or Path("rl-audit-gallery.html")).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(html)
    alarm = read_run_json(output_uri, ALARM)
    from firm.storage import is_published

    status = "completed" if is_published(f"{output_uri.rstrip('/')}/final/lora") else "running"
    if alarm is not None:
        status = alarm.get("status", "stopped_by_alarm")
    audits = [r for r in read_run_metrics(output_uri) if "audit/mae" in r or "audit/n" in r]
    echo_json(
        {
            "gallery": str(dest),
            "status": status,
            "alarm": (alarm or {}).get("alarm"),
            "checkpoint": (alarm or {}).get("checkpoint"),
            "last_audit": {
                k: v
                for k, v in (audits[-1] if audits else {}).items()
                if k == "step" or k.startswith("audit/")
            },
        }
    )
    if open_:
        import webbrowser

        webbrowser.open(dest.as_uri())
