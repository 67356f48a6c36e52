"""What every command shares: consoles, error reporting, JSON output, the STA options."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import StaError

# stdout carries results, stderr carries logs and progress.
# Not a terminal (a pipe, a log file): wide enough that tables are not cut.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def fail(message: str, code: int = 1) -> None:
    """One line on stderr, then exit."""
    print(f"sta: error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn StaError (bad input) into one stderr line and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StaError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


class Steps:
    """Progress for long work: a spinner on stderr, and one log line per finished step."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._status = None

    def __enter__(self):
        if not self.quiet:
            self._status = err.status("starting")
            self._status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        if self._status is not None:
            self._status.update(message)
            err.print(f"[dim]· {message}[/dim]")

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)


# STA options, shared by the commands that build a pruned model.
R1 = Annotated[Optional[int], typer.Option("--r1", help="Tokens dropped per frame at the first stage (0 = no pruning).")]
FirstGroup = Annotated[
    Optional[str], typer.Option("--first-group", help="Image-style drop on the first visited group: tome | random | grid.")
]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for --first-group random | grid.")]
Order = Annotated[Optional[str], typer.Option("--order", help="Group visiting order per stage: fbf | bfb | fff | bbb.")]
Schedule = Annotated[
    Optional[str], typer.Option("--schedule", help="Drops across stages: decreasing | constant | increasing.")
]
Similarity = Annotated[
    Optional[str], typer.Option("--similarity", help="Affinity feature: key | query | value | feature.")
]
Score = Annotated[Optional[str], typer.Option("--score", help="Pruning score: sta | temporal | semantic.")]
Revision = Annotated[Optional[str], typer.Option("--revision", help="Hub revision (branch, tag or commit).")]
Token = Annotated[Optional[str], typer.Option("--token", help="Hugging Face token (default: the logged-in one).")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]


# What the weights cannot tell, shared by every command that loads a model.
NumHeads = Annotated[Optional[int], typer.Option("--num-heads", help="Attention heads (VideoMAE): overrides the config or the released size's count.")]
ImageSize = Annotated[Optional[int], typer.Option("--image-size", help="Input height = width in pixels (default: the config's, else the released model's).")]
NumFrames = Annotated[Optional[int], typer.Option("--num-frames", help="Frames per clip (default: the config's, else the released model's).")]
Mean = Annotated[Optional[str], typer.Option("--mean", help="Normalisation mean R,G,B of [0, 1] pixels, e.g. 0.485,0.456,0.406.")]
Std = Annotated[Optional[str], typer.Option("--std", help="Normalisation std R,G,B of [0, 1] pixels, e.g. 0.229,0.224,0.225.")]


def arch_options(num_heads, image_size, num_frames, mean, std):
    """The architecture options as the `arch` argument of resolve / export / profile / evaluate."""
    from ..models.overrides import ArchOverrides

    return ArchOverrides.parse(num_heads, image_size, num_frames, mean, std)


class _ErrConsoleHandler(logging.Handler):
    """Library notes (logger 'sta_cli': assumed input size, head count, cache fallback) as one log line each."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"· note: {record.getMessage()}", markup=False, highlight=False, soft_wrap=True)


_lib_log = logging.getLogger("sta_cli")
if not _lib_log.handlers:
    _lib_log.addHandler(_ErrConsoleHandler())
    _lib_log.propagate = False


def sta_options(first_group, seed, order, schedule, similarity, score) -> dict:
    return dict(first_group=first_group, seed=seed, order=order, schedule=schedule, similarity=similarity, score=score)


def local_artifact(kind: str) -> Path | None:
    """The artifact `sta prune` left in the current folder, if any (newest first); says which it picked."""
    from ..io.artifact import find_artifacts

    found = find_artifacts(Path("."))
    if not found:
        return None
    others = f" (newest of {len(found)})" if len(found) > 1 else ""
    err.print(f"{kind}: using the artifact in ./{found[0].name}{others}")
    return found[0]
