"""`firmctl critic score`: judge one edit (execution + consistency) or one generated image with a critic model."""

from __future__ import annotations

from pathlib import Path

import typer

from firm.cli._common import cli_errors, echo_json, library_output_to_stderr
from firm.cli.critic_cmd import app
from firm.cli.rubrics_cmd import RUBRICS_HELP
from firm.errors import InputError


def _reject(task: str, **given: object) -> None:
    extra = [f"--{k.replace('_', '-')}" for k, v in given.items() if v not in (None, False)]
    if extra:
        raise InputError(f"{', '.join(extra)} cannot be used with --task {task}")


@app.command("score")
@cli_errors
def score_cmd(
    model: str = typer.Option(..., "--model", help="critic: local dir, file:// or s3:// URI, or HF id"),
    task: str = typer.Option(..., "--task", help="edit | gen"),
    source: str | None = typer.Option(None, "--source", help="edit: source image (path or URI)"),
    edited: str | None = typer.Option(None, "--edited", help="edit: edited image (path or URI)"),
    instruction: str | None = typer.Option(None, "--instruction", help="edit: the editing instruction"),
    image: str | None = typer.Option(None, "--image", help="gen: the generated image (path or URI)"),
    prompt: str | None = typer.Option(None, "--prompt", help="gen: the generation prompt"),
    quality: bool = typer.Option(False, "--quality", help="gen: also judge quality and report QMA"),
    readout: str = typer.Option(
        "text", "--readout", help="text (parsed score) | expected (digit-probability mean)"
    ),
    policy: str = typer.Option("skip", "--policy", help="on a parse failure: skip | min_reward | raise"),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda"),
    dtype: str | None = typer.Option(None, "--dtype", help="e.g. bfloat16 (default: the checkpoint's)"),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="answer budget for every rubric (default: the rubric pack's per axis)"
    ),
    rubrics: str | None = typer.Option(None, "--rubrics", help=RUBRICS_HELP + " (default: firm-v1)"),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", help="per-image pixel budget (default: processor's)"
    ),
) -> None:
    """Print {"judgements": [...], "reward": {...}} for one edit or one generated image."""
    if task not in ("edit", "gen"):
        raise InputError(f"unknown --task {task!r}; expected edit or gen")
    if readout not in ("text", "expected"):
        raise InputError(f"unknown --readout {readout!r}; expected text or expected")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if task == "edit":
        _reject(task, image=image, prompt=prompt, quality=quality)
        missing = [
            n
            for n, v in (("--source", source), ("--edited", edited), ("--instruction", instruction))
            if not v
        ]
    else:
        _reject(task, source=source, edited=edited, instruction=instruction)
        missing = [n for n, v in (("--image", image), ("--prompt", prompt)) if not v]
    if missing:
        raise InputError(f"--task {task} needs {', '.join(missing)}")
    for name, value in (("--source", source), ("--edited", edited), ("--image", image)):
        if value and "://" not in value and not Path(value).expanduser().is_file():
            what = (
                "is a directory, not an image file" if Path(value).expanduser().is_dir() else "no such file"
            )
            raise InputError(f"{name} {value}: {what}")

    with library_output_to_stderr():  # one JSON document on stdout or one error line, nothing else
        from firm.critic import Critic, EditInput, GenInput
        from firm.rewards.formulas import EditRewardConfig, GenRewardConfig

        critic = Critic.from_pretrained(
            model,
            device=device,
            dtype=dtype,
            max_pixels=max_pixels,
            max_new_tokens=max_new_tokens,
            rubrics=rubrics,
        )
        if task == "edit":
            item = EditInput(source=source, edited=edited, instruction=instruction or "", sample_id="cli")
            [(reward, judgements)] = critic.edit_rewards(
                [item], EditRewardConfig(readout=readout), policy=policy
            )
        else:
            gen = GenInput(image=image, prompt=prompt or "", sample_id="cli")
            [(reward, judgements)] = critic.gen_rewards(
                [gen], quality=quality, config=GenRewardConfig(readout=readout), policy=policy
            )
    echo_json(
        {
            "judgements": [j.model_dump(mode="json") for j in judgements if j is not None],
            "reward": reward.model_dump(mode="json"),
            "rubrics": critic.pack.ref,
        }
    )
