"""`sta eval`: accuracy of the unpruned model and STA settings on a labelled video set (torchrun-ready)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import StaError
from ..flops import FLOPS_LABEL
from ..tasks.evaluate.summary import EvalSummary
from . import common as c
from . import options as o


class RichProgress:
    """Videos done, rate and ETA on stderr; unreadable videos logged above the bar. When stderr is
    not a terminal (a batch job's log), one plain line every LOG_EVERY seconds instead."""

    LOG_EVERY = 30.0

    def __init__(self):
        self._bar = None
        self._last = 0.0

    def start(self, total: int, done: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("evaluating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("videos"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=c.err,
        )
        self._bar.start()
        self._last = time.monotonic()
        self._task = self._bar.add_task("eval", total=total, completed=done, rate="")
        if done:
            c.err.print(f"resuming: {done} of {total} videos already done")

    def advance(self, n: int) -> None:
        self._bar.advance(self._task, n)
        task = self._bar.tasks[0]
        self._bar.update(self._task, rate=f"{task.speed:.2f}/s" if task.speed else "")
        if not c.err.is_terminal and time.monotonic() - self._last >= self.LOG_EVERY:
            self._last = time.monotonic()
            eta = f", ETA {datetime.timedelta(seconds=round(task.time_remaining))}" if task.time_remaining else ""
            rate = f", {task.speed:.2f} videos/s" if task.speed else ""
            c.err.print(f"{int(task.completed)}/{int(task.total)} videos{rate}{eta}")

    def log(self, message: str) -> None:
        c.err.print(f"[yellow]warning:[/yellow] {message}")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# --- eval's own options --------------------------------------------------------------------------

Dataset = Annotated[
    Path,
    typer.Argument(
        metavar="DATASET",
        help="List file (`path label` per line, or CSV with path and label columns) or a folder with one subfolder per class.",
        show_default=False,
    ),
]
# Unlike the single --r1 of prune, export and profile: eval compares several settings in one pass.
R1List = Annotated[
    str | None,
    typer.Option(
        "--r1",
        metavar="R1,R1,...",
        show_default="an artifact's r1, else half the paper's setting and the paper's setting scaled to the model "
        "(ViT-B: 32,64; the demo: 10,21)",
        help="Comma-separated r1 values to compare (a list, unlike prune's, export's and profile's single --r1); "
        "0 (unpruned) is always included.",
    ),
]
Workers = Annotated[
    int,
    typer.Option("--workers", "-w", metavar="INT", help="Decoding worker processes (0: decode in the main process)."),
]
Out = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        metavar="FOLDER",
        show_default="./eval-<model>-<dataset>",
        help="Output folder; re-running with the same folder resumes.",
    ),
]
Root = Annotated[
    Path | None,
    typer.Option(
        "--root",
        metavar="FOLDER",
        show_default="the list's folder",
        help="Folder that relative paths in the list are relative to.",
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        metavar="NAME",
        help="fp32, or fp16 / bf16 autocast (the paper's throughput figures use fp16 on GPU).",
    ),
]
# Not quite prune's and export's --force (o.Force): without it eval resumes OUT instead of refusing it.
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Discard the results already in OUT and start over (without --force eval resumes them, where prune "
        "and export refuse an existing output). Like theirs, never replaces a folder sta did not write; never "
        "writes into an artifact or export folder.",
    ),
]


@c.handle_errors
@o.arch_options
@o.sta_options
def eval_command(
    dataset: Dataset,
    model: o.ModelOrDefault = None,
    r1: R1List = None,
    views: o.Views = "1x1",
    batch: o.Batch = 8,
    workers: Workers = 2,
    out: Out = None,
    root: Root = None,
    device: o.Device = "auto",
    precision: Precision = "fp32",
    force: Force = False,
    compile: o.Compile = False,
    revision: o.Revision = None,
    token: o.Token = None,
    json: o.Json = False,
    sta_options: dict | None = None,
    arch=None,
):
    """Accuracy of the unpruned model and each r1 on a labelled video set (top-1, top-5, agreement, GFLOPs, clips/s).

    Runs the same way under `torchrun --nproc-per-node N -m sta_cli eval ...`: ranks share the videos, rank 0 writes OUT.
    """
    import os

    from ..tasks.evaluate.run import evaluate

    main_rank = os.environ.get("RANK", "0") == "0"
    model = c.default_model("eval", model, demo=True)  # None: the task's line
    try:
        summary = evaluate(
            dataset, model, r1, views=views, batch=batch, workers=workers, out=out, root=root, force=force,
            device=device, precision=precision, revision=revision, token=token, arch=arch,
            progress=RichProgress() if main_rank else None, compile=compile, **sta_options,
        )  # fmt: skip
    except StaError as e:
        if not main_rank:  # every rank fails with the same message; rank 0 prints it once
            raise typer.Exit(e.exit_code) from None
        raise
    if not main_rank:
        return  # rank 0 prints the results
    if json:
        c.print_json(summary)
        return
    print_summary(summary)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def print_summary(s: EvalSummary) -> None:
    from rich.table import Table

    v = s.videos
    table = Table(title=f"{s.model.name} on {v.evaluated} videos, {s.views} views", header_style="bold")
    for name in ("r1", "tokens", "GFLOPs/clip", "top-1 %", "top-5 %", "agree %", "clips/s"):
        table.add_column(name, justify="right")
    for row in s.settings:
        table.add_row(
            "unpruned" if row.r1 == 0 else str(row.r1),
            str(row.tokens[-1]) if row.tokens else "-",
            f"{row.gflops_per_clip:.2f}",
            _pct(row.top1),
            _pct(row.top5),
            _pct(row.agreement_with_unpruned),
            "-" if row.clips_per_s is None else f"{row.clips_per_s:.1f}",
        )
    c.out.print(table)
    c.out.print(f"{FLOPS_LABEL}; agree = same top-1 as the unpruned model; tokens = after the last STA stage")
    if v.failed:
        names = ", ".join(f.path for f in s.failed[:5]) + (" ..." if v.failed > 5 else "")
        c.out.print(f"{v.failed} of {v.total} videos could not be read and are not counted: {names}")
    c.out.print(f"results in {s.output}/summary.json, per-video predictions in {s.output}/predictions.jsonl")
