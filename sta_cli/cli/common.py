"""What every command shares: consoles, error reporting, JSON output, progress, the default model."""

from __future__ import annotations

import functools
import logging
import sys
import time

import typer
from rich.console import Console

from ..errors import StaError
from ..io.outputs import dumps

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
    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


class Steps:
    """Progress for long work, on stderr: a spinner with the running step and its clock, and one log
    line per finished step with what it cost (seconds, the process's peak memory so far). Not a
    terminal (a log file): each step is also logged when it starts, so a log shows what is running."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._status = None
        self._step: tuple[str, float] | None = None

    def __enter__(self):
        if not self.quiet:
            self._status = err.status("starting")
            self._status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        if self._status is None:
            return
        self._finish()
        self._step = (message, time.perf_counter())
        self._status.update(_Clock(message, self._step[1]))
        if not err.is_terminal:
            err.print(f"[dim]· {message} ...[/dim]", soft_wrap=True)

    def _finish(self) -> None:
        if self._step is not None:
            message, t0 = self._step
            err.print(f"[dim]· {message}: {time.perf_counter() - t0:.1f} s{peak_memory()}[/dim]", soft_wrap=True)
            self._step = None

    def __exit__(self, *exc):
        if self._status is not None:
            self._finish()
            self._status.__exit__(*exc)


class _Clock:
    """A step's text with its running time, re-rendered by the spinner."""

    def __init__(self, message: str, t0: float):
        self.message, self.t0 = message, t0

    def __rich__(self) -> str:
        return f"{self.message} [dim]{time.perf_counter() - self.t0:.0f} s[/dim]"


def flops_change(pruned: float, unpruned: float) -> str:
    """The pruned model's GFLOPs against the unpruned one's, signed: "-36%", or "+4%" where STA's
    scoring costs more than the tokens it drops (a small r1 on a narrow model)."""
    change = pruned / unpruned - 1 if unpruned else 0.0
    return f"{change:+.0%}"


def peak_memory() -> str:
    """The process's peak resident size so far, as ", peak memory 2.41 GB" ("" where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return ""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak *= 1 if sys.platform == "darwin" else 1024
    return f", peak memory {peak / 1e9:.2f} GB"


class _ErrConsoleHandler(logging.Handler):
    """Library notes (logger 'sta_cli': assumed input size, head count, cache fallback) as one log line each."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"· note: {record.getMessage()}", markup=False, highlight=False, soft_wrap=True)


_lib_log = logging.getLogger("sta_cli")
if not _lib_log.handlers:
    _lib_log.addHandler(_ErrConsoleHandler())
    _lib_log.propagate = False


def default_model(command: str, spec: str | None, demo: bool = False) -> str | None:
    """runtime.loading.default_model (the one rule for a command run without a model), saying on
    stderr which model `command` picked."""
    from ..runtime import loading

    return loading.default_model(spec, demo, say=lambda m: err.print(f"{command}: {m}"))
