"""`firmctl rubrics`: list, show and import rubric packs (the prompts critics are asked with)."""

from __future__ import annotations

import typer

from firm.cli._common import cli_errors, echo_json, echo_out

app = typer.Typer(help="Rubric packs: the prompts critics are asked with.", no_args_is_help=True)

RUBRICS_HELP = (
    "rubric pack: a name (firm-v1, or one in $FIRM_HOME/rubrics), a YAML path, or a file:// / s3:// URI"
)


@app.command("list")
@cli_errors
def list_packs() -> None:
    """Packs available by name: their version, sha256 and rubrics (JSON)."""
    from firm.rewards.packs import available_packs
    from firm.rubric_store import load_pack

    echo_json([load_pack(name).summary() for name in available_packs()])


@app.command("show")
@cli_errors
def show(
    pack: str = typer.Argument("firm-v1", help=RUBRICS_HELP),
    rubric: str | None = typer.Option(
        None, "--rubric", help="print one rubric's template, e.g. edit.execution or gen.instruction.teacher"
    ),
) -> None:
    """A pack's summary (JSON), or with --rubric one rubric's template text."""
    from firm.rubric_store import load_pack

    p = load_pack(pack)
    if rubric is None:
        echo_json(p.summary() | {"source": p.source})
        return
    echo_out(p.by_id(rubric).template)


@app.command("import-official")
@cli_errors
def import_official(
    src: str = typer.Argument(
        ...,
        help="a FIRM-Reward checkout, or a URL prefix such as "
        "https://raw.githubusercontent.com/VisionXLab/FIRM-Reward/<commit>",
    ),
    name: str = typer.Option("firm-official", "--name", help="the pack's name"),
    expect_sha256: str | None = typer.Option(
        None,
        "--expect-sha256",
        help="refuse unless what is read has this digest (printed by a previous import)",
    ),
    out: str | None = typer.Option(
        None,
        "--out",
        help="where to write the pack: a directory, a .yaml path or a file:// / s3:// URI "
        "(default: $FIRM_HOME/rubrics/NAME.yaml, found by name afterwards)",
    ),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds per file fetched from a URL"),
) -> None:
    """Turn the official FIRM prompt templates into a rubric pack (parsed with ast, never executed)."""
    from firm.rewards.official import HEADER
    from firm.rubric_store import import_official as run_import
    from firm.rubric_store import save_pack

    pack = run_import(src, name=name, expect_sha256=expect_sha256, timeout=timeout)
    digest = pack.source["sha256"]
    where = save_pack(pack, out, header=HEADER.format(src=src, digest=digest))
    echo_json(pack.summary() | {"path": where, "source_sha256": digest, "files": pack.source["files"]})
