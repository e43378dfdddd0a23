"""`firmctl`: the thin Typer CLI over FIRM's Python API.

Each command group lives in its own module (`firm/cli/<group>_cmd.py`) and only parses options and calls the
library; heavy imports (torch, transformers) happen inside commands so `firmctl --help` stays fast.
"""

from __future__ import annotations

import typer

from firm import __version__
from firm.cli import (
    bench_cmd,
    cluster_cmd,
    critic_cmd,
    critic_parse,  # noqa: F401  (registers `critic parse`)
    critic_score,  # noqa: F401  (registers `critic score`)
    critic_train,  # noqa: F401  (registers `critic train`)
    data_cmd,
    doctor_cmd,
    job_cmd,
    models_cmd,
    pipeline_cmd,
    quickstart_cmd,
    recipes_cmd,
    reward_cmd,
    rl_cmd,
    rubrics_cmd,
    serve_cmd,
    storage_cmd,
)

app = typer.Typer(
    name="firmctl",
    help="FIRM: trustworthy critics, rewards and RL for image editing and generation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the FIRM version."""
    typer.echo(__version__)


app.command(name="doctor")(doctor_cmd.doctor)
app.command(name="quickstart")(quickstart_cmd.quickstart)
app.add_typer(storage_cmd.app, name="storage")
app.add_typer(reward_cmd.app, name="reward")
app.add_typer(critic_cmd.app, name="critic")
app.add_typer(models_cmd.app, name="models")
app.add_typer(data_cmd.app, name="data")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(serve_cmd.app, name="serve")
app.add_typer(recipes_cmd.app, name="recipes")
app.add_typer(rl_cmd.app, name="rl")
app.add_typer(rubrics_cmd.app, name="rubrics")
app.add_typer(job_cmd.app, name="job")
app.add_typer(pipeline_cmd.app, name="pipeline")
app.add_typer(cluster_cmd.app, name="cluster")


def main() -> None:
    """The `firmctl` console script. Usage errors (a missing option, a value of the wrong type, an unknown
    command) print one `error: ...` line and exit 2, like every other bad input; help still prints in full."""
    import sys

    from firm.cli._common import one_line

    try:
        rv = app(standalone_mode=False)
    except typer.TyperException as exc:  # Typer's (vendored) click usage errors
        code = int(getattr(exc, "exit_code", 2))
        ctx = getattr(exc, "ctx", None)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `firmctl [GROUP]` alone: the help, as before
            if message:  # Typer's rich help has already printed itself (its message is then empty)
                typer.echo(message)
            sys.exit(code)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {one_line(message)}{hint}", err=True)
        sys.exit(code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    # commands return None; a `typer.Exit(code)` raised inside one comes back here as its exit code
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
