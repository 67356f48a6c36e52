"""`sta prune`: prune a checkpoint with STA and write a validated artifact folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..flops import FLOPS_LABEL
from ..tasks.prune import PruneReport
from ..tasks.prune import prune as run_prune
from . import common as c
from . import options as o


@c.handle_errors
@o.arch_options
@o.sta_options
def prune(
    model: o.Model,
    r1: o.R1 = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="FOLDER", show_default="./<model>-sta-r<r1>", help="Output folder."),
    ] = None,
    clip: o.Clip = None,
    force: o.Force = False,
    revision: o.Revision = None,
    token: o.Token = None,
    json: o.Json = False,
    sta_options: dict | None = None,
    arch=None,
):
    """Prune a model with STA and write an artifact (weights, config, settings, report)."""
    with c.Steps(quiet=False) as log:
        report = run_prune(
            model,
            r1,
            out,
            clip=clip,
            force=force,
            revision=revision,
            token=token,
            log=log,
            **arch.given(),
            **sta_options,
        )
    if json:
        c.print_json(report)
        return
    print_summary(report)


def print_summary(report: PruneReport) -> None:
    from rich.table import Table

    g, v, t = report.gflops, report.validation, report.tokens
    params = f"{report.model.params:,}"
    table = Table(show_header=True, header_style="bold", title=f"STA r1={report.sta['r1']} on {report.source.name}")
    table.add_column("")
    table.add_column("unpruned", justify="right")
    table.add_column("pruned", justify="right")
    table.add_row("parameters", params, params)
    table.add_row(FLOPS_LABEL, f"{g.unpruned:.2f}", f"{g.pruned:.2f} ({c.flops_change(g.pruned, g.unpruned)})")
    table.add_row("tokens per stage", " ".join(map(str, t.unpruned)), " -> ".join(map(str, t.pruned)))
    table.add_row("top-1", v.top5_unpruned[0].label, v.top5_pruned[0].label)
    c.out.print(table)
    c.out.print(
        f"validation on {v.clip} clip: r1=0 reproduces the source (max abs diff "
        f"{v.reproduces_source.max_abs_diff:.2g}); pruned vs unpruned: top-1 agreement {v.top1_agreement:.0%}, "
        f"top-5 overlap {v.top5_overlap:.0%}, logit cosine {v.logit_cosine:.4f}"
    )
    c.out.print(f"artifact written to {report.output}")
