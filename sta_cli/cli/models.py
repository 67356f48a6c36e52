"""`sta models`: the aliases `--model` accepts."""

from __future__ import annotations

from ..models.registry import ALIASES
from . import common as c
from . import options as o


@c.handle_errors
def models(json: o.Json = False):
    """List model aliases with size, classes and where the weights come from."""
    rows = [
        {
            "alias": a.name,
            "family": a.family,
            "size": a.size,
            "classes": a.classes,
            "dataset": a.dataset,
            "source": str(a.path) if a.packaged else a.source,
        }
        for a in ALIASES.values()
    ]
    if json:
        c.print_json(rows)
        return
    from rich.table import Table

    table = Table("alias", "family", "size", "classes", "dataset", "source", header_style="bold")
    for r in rows:
        table.add_row(r["alias"], r["family"], r["size"], str(r["classes"]), r["dataset"], r["source"])
    c.out.print(table)
