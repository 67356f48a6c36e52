"""`sta profile`: labels, cost and latency of a model on a video, unpruned vs pruned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..flops import FLOPS_LABEL
from ..runtime.measure import OnnxTiming, Timing
from ..tasks.profile import ProfileReport, Sweep
from . import common as c
from . import options as o

# --- profile's own options -----------------------------------------------------------------------

Clip = Annotated[
    Path | None,
    typer.Argument(metavar="CLIP", show_default=False, help="Video file (default: the demo model's sample clip)."),
]
Onnx = Annotated[
    Path | None,
    typer.Option(
        "--onnx",
        metavar="FILE",
        show_default="the artifact's model.onnx",
        help="Also time this ONNX file with ONNX Runtime.",
    ),
]
Vis = Annotated[
    Path | None,
    typer.Option(
        "--vis", metavar="PNG", show_default="none", help="Write the sampled frames with dropped tokens whitened (PNG)."
    ),
]
SweepR1 = Annotated[
    str | None,
    typer.Option(
        "--sweep",
        metavar="R1,R1,...",
        show_default="none",
        help="Comma-separated r1 values: agreement and throughput vs r1, STA vs random pruning.",
    ),
]
SweepPng = Annotated[
    Path | None,
    typer.Option(
        "--sweep-png",
        metavar="PNG",
        show_default="next to --vis, else ./sweep.png",
        help="Where the sweep plot goes.",
    ),
]
Runs = Annotated[
    int | None,
    typer.Option(
        "--runs", metavar="INT", show_default="as many as fit ~4 s, 3 to 20", help="Timed runs per measurement."
    ),
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", metavar="INT", show_default="torch's", help="CPU threads for torch and ONNX Runtime."),
]


@c.handle_errors
@o.arch_options
@o.sta_options
def profile(
    clip: Clip = None,
    model: o.ModelOrDefault = None,
    r1: o.R1 = None,
    onnx: Onnx = None,
    batch: o.Batch = 1,
    views: o.Views = "1x1",
    vis: Vis = None,
    sweep: SweepR1 = None,
    sweep_png: SweepPng = None,
    runs: Runs = None,
    threads: Threads = None,
    device: o.Device = "auto",
    compile: o.Compile = False,
    revision: o.Revision = None,
    token: o.Token = None,
    json: o.Json = False,
    sta_options: dict | None = None,
    arch=None,
):
    """Profile a model on a video: top-5 labels, parameters, GFLOPs, tokens, latency, unpruned vs pruned."""
    from ..tasks.profile import profile as run_profile

    model = c.default_model("profile", model, demo=True)
    report = run_profile(
        clip, model, r1=r1, onnx=onnx, batch=batch, views=views, vis=vis, sweep_r1=sweep, sweep_png=sweep_png,
        runs=runs, threads=threads, device=device, revision=revision, token=token, compile=compile, arch=arch,
        log=lambda m: c.err.print(f"[dim]· {m}[/dim]"), note=lambda m: c.err.print(f"profile: {m}"), **sta_options,
    )  # fmt: skip
    for w in report.warnings:
        c.err.print(f"[yellow]warning:[/yellow] {w}")
    if json:
        c.print_json(report)
        return
    print_report(report)


def _timing(t: Timing | None) -> str:
    return f"{t.latency_ms:.1f} ms · {t.throughput_clips_per_s:.2f} clips/s" if t else "-"


def print_report(r: ProfileReport) -> None:
    from rich.table import Table

    u, p, clip, d = r.unpruned, r.pruned, r.clip, r.device
    where = Path(clip.path).name if clip.path else "synthetic clip"
    title = (
        f"{r.model.name} on {where} ({clip.views} views) · STA r1={r.sta['r1']} · {d.type}, "
        f"{d.torch_threads} threads, batch {d.batch}"
    )
    table = Table(show_header=True, header_style="bold", title=title)
    table.add_column("")
    table.add_column("unpruned", justify="right")
    table.add_column("pruned", justify="right")
    for i in range(max(len(u.top5), len(p.top5))):
        cells = [f"{s.top5[i].label} {s.top5[i].prob:.1%}" if i < len(s.top5) else "" for s in (u, p)]
        table.add_row(f"top-{i + 1}" if i else "top-1", *cells)
    table.add_row("parameters", f"{u.params:,}", f"{p.params:,}")
    table.add_row(FLOPS_LABEL, f"{u.gflops:.3g}", f"{p.gflops:.3g} ({c.flops_change(p.gflops, u.gflops)})")
    table.add_row(
        "tokens per stage", " -> ".join(map(str, u.tokens_per_stage)), " -> ".join(map(str, p.tokens_per_stage))
    )
    _timing_rows(table, r)
    c.out.print(table)
    if isinstance(u.onnxruntime, OnnxTiming) and u.onnxruntime.exported_for_comparison:
        c.out.print(f"* the unpruned model, exported to ONNX here to compare with {Path(r.onnx.file).name}")
    a = r.agreement
    c.out.print(
        f"pruned vs unpruned over {clip.views} views: top-1 agreement {a.top1_agreement:.0%}, top-5 overlap "
        f"{a.top5_overlap:.0%}, logit cosine {a.logit_cosine:.4f}"
    )
    if r.onnx is not None and r.onnx.matches is None:
        c.out.print(
            f"{r.onnx.file} matches neither model (max abs logit diff {r.onnx.max_abs_diff}); "
            f"ONNX Runtime: {_timing(r.onnx.timing)}"
        )
    if r.vis:
        c.out.print(f"kept tokens drawn to {r.vis}")
    if r.sweep:
        print_sweep(r.sweep)


def _timing_rows(table, r: ProfileReport) -> None:
    u, p = r.unpruned, r.pruned
    table.add_row(f"torch eager ({u.torch.runs} runs, median)", _timing(u.torch), _timing(p.torch))
    if u.torch_compiled:
        table.add_row("torch compiled", _timing(u.torch_compiled), _timing(p.torch_compiled))
        table.add_row(
            "  compile time (first call)",
            f"{u.torch_compiled.compile_seconds:.1f} s",
            f"{p.torch_compiled.compile_seconds:.1f} s",
        )
    if r.onnx is not None:
        note = " *" if isinstance(u.onnxruntime, OnnxTiming) and u.onnxruntime.exported_for_comparison else ""
        table.add_row("ONNX Runtime (CPU)", _timing(u.onnxruntime) + note, _timing(p.onnxruntime))
    if p.onnxruntime_int8:
        table.add_row("ONNX Runtime int8 (CPU)", "-", _timing(p.onnxruntime_int8))
    share = p.torch.sta_scoring_share
    table.add_row("STA scoring share of the time", "", f"{share:.1%}" if share is not None else "-")


def print_sweep(sweep: Sweep) -> None:
    from rich.table import Table

    table = Table(
        "r1",
        FLOPS_LABEL,
        "tokens",
        "STA top-1 agr.",
        "random top-1 agr.",
        "STA cosine",
        "random cosine",
        "clips/s",
        header_style="bold",
        title="r1 sweep (random: mean of 3 seeds)",
    )
    for row in sweep.rows:
        table.add_row(
            str(row.r1),
            f"{row.gflops:.3g}",
            " -> ".join(map(str, row.tokens_per_stage)),
            f"{row.sta.top1_agreement:.0%}",
            f"{row.random.top1_agreement:.0%}",
            f"{row.sta.logit_cosine:.4f}",
            f"{row.random.logit_cosine:.4f}",
            f"{row.throughput:.2f}",
        )
    c.out.print(table)
    c.out.print(f"sweep plot written to {sweep.png}")
