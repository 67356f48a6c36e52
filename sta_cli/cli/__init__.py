"""The `sta` command: thin Typer commands over the library API, in workflow order.

Usage errors (an unknown option, a value that does not parse) print as one `sta: error:` line with
exit code 2, like every other error; `-h` and `--help` both show help.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException

from .. import __version__


class StaGroup(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)  # registration order: the workflow, not the alphabet

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as e:  # usage errors: exit code 2
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"sta: error: {e.format_message()}{hint}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            print("sta: error: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="sta",
    cls=StaGroup,
    help="STA token pruning for video transformers: prune, export, profile.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        print(f"sta {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version.")):
    """STA token pruning for video transformers (Semantic-aware Temporal Accumulation, ICCV 2023)."""


def _register() -> None:
    from .eval import eval_command
    from .export import export
    from .models import models
    from .profile import profile
    from .prune import prune

    app.command()(models)
    app.command()(prune)
    app.command()(export)
    app.command()(profile)
    app.command("eval")(eval_command)


_register()
