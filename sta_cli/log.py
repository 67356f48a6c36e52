"""How library functions report progress: a callable taking one line, silent by default."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """The default Log: library calls say nothing unless the caller passes a logger."""
