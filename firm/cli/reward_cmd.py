"""`firmctl reward`: Base-and-Bonus rewards (CME for editing, QMA for generation) from raw 1-5 scores."""

from __future__ import annotations

import typer

from firm.cli._common import cli_errors, echo_json
from firm.errors import InputError

app = typer.Typer(
    help="Base-and-Bonus rewards (CME for editing, QMA for generation) from raw 1-5 scores.",
    no_args_is_help=True,
)

_DIGITS = 12  # round printed floats so 0.1 + 0.2 style noise does not reach users


@app.command("cme")
@cli_errors
def cme_cmd(
    execution: float = typer.Option(..., "--execution", help="raw execution score, 1..5"),
    consistency: float = typer.Option(..., "--consistency", help="raw consistency score, 1..5"),
    w_base: float = typer.Option(0.6, "--w-base", help="weight of execution (the base)"),
    w_bonus: float = typer.Option(0.4, "--w-bonus", help="weight of consistency (the bonus)"),
    formulation: str = typer.Option("cme", "--formulation", help="cme | sum | guard"),
    guard_threshold: float = typer.Option(
        2.0, "--guard-threshold", help="guard: drop the bonus when raw execution <= this"
    ),
) -> None:
    """Editing reward: CME = E·(w_base + w_bonus·C) (or the 'sum' / 'guard' ablations), E, C = (s-1)/4."""
    from firm.rewards.formulas import EDIT_FORMULATIONS, EditRewardConfig, edit_formula, normalize_score

    if formulation not in EDIT_FORMULATIONS:
        raise InputError(
            f"unknown --formulation {formulation!r}; expected one of {', '.join(EDIT_FORMULATIONS)}"
        )
    e01 = normalize_score(execution, "--execution")
    c01 = normalize_score(consistency, "--consistency")
    config = EditRewardConfig(
        formulation=formulation, w_base=w_base, w_bonus=w_bonus, guard_threshold=guard_threshold
    )
    reward = edit_formula(e01, c01, config)
    echo_json(
        {
            "reward": round(reward, _DIGITS),
            "execution": round(e01, _DIGITS),
            "consistency": round(c01, _DIGITS),
            "formulation": formulation,
        }
    )


def _parse_quality(text: str) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise InputError(f"--quality must be three comma-separated 1..5 scores like 4,3,5; got {text!r}")
    return values


@app.command("qma")
@cli_errors
def qma_cmd(
    instruction: float = typer.Option(..., "--instruction", help="raw instruction-following score, 1..5"),
    quality: str = typer.Option(..., "--quality", help="three raw quality sub-scores S1,S2,S3 (1..5 each)"),
    w_base: float = typer.Option(0.4, "--w-base", help="weight of instruction following (the base)"),
    w_bonus: float = typer.Option(0.6, "--w-bonus", help="weight of the quality modulation (the bonus)"),
) -> None:
    """Generation reward: QMA = I·(w_base + w_bonus·Q), Q = (min(S1,S2,S3)-1)/4."""
    from firm.rewards.formulas import GenRewardConfig, normalize_score, qma, quality_score

    config = GenRewardConfig(w_base=w_base, w_bonus=w_bonus)
    i01 = normalize_score(instruction, "--instruction")
    q01 = quality_score(_parse_quality(quality), "--quality")
    reward = qma(i01, q01, config.w_base, config.w_bonus)
    echo_json(
        {
            "reward": round(reward, _DIGITS),
            "instruction": round(i01, _DIGITS),
            "quality": round(q01, _DIGITS),
            "formulation": "qma",
        }
    )
