"""`firmctl recipes`: Shipped recipe configs."""

from __future__ import annotations

import typer

from firm.cli._common import cli_errors, echo_json, echo_out

app = typer.Typer(help="Shipped recipe configs.", no_args_is_help=True)


@app.command("ls")
@cli_errors
def ls_cmd(
    kind: str | None = typer.Option(None, "--kind", help="only this kind (critic, rl, ...)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """List shipped recipes: name, path and the first line of each file's header."""
    from firm.recipes import list_recipes

    recipes = list_recipes(kind)
    if kind is not None and not recipes:
        from firm.errors import InputError

        kinds = ", ".join(sorted({r.kind for r in list_recipes()}))
        raise InputError(f"--kind {kind!r}: no such kind of recipe (kinds: {kinds})")
    if as_json:
        echo_json([{**r.model_dump(mode="json")} for r in recipes])
        return
    width = max((len(r.name) for r in recipes), default=4)
    for r in recipes:
        echo_out(f"{r.name:<{width}}  {r.description}")
