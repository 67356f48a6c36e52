"""The `sta` command: thin Typer commands over the library API (sta_cli.api and friends)."""

from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="sta",
    help="STA token pruning for video transformers: prune, export, profile.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool):
    if value:
        print(f"sta {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version.")):
    """STA token pruning for video transformers."""


def _register() -> None:
    from .models import models
    from .prune import prune

    app.command()(prune)
    app.command()(models)
    from .profile import profile; app.command()(profile)  # noqa: E702
    from .eval import eval_command; app.command("eval")(eval_command)  # noqa: E702
    from .export import export; app.command()(export)  # noqa: E702


_register()
