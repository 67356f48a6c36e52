"""`sta export`: a pruned model as ONNX / TorchScript / torch.export, validated against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import StaError, ValidationFailed
from . import common as c


@c.handle_errors
def export(
    source: Annotated[
        Optional[str],
        typer.Argument(help="Artifact folder from `sta prune` (default: the one in the current folder), or a model spec."),
    ] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Export a model spec (alias, Hub id, folder, file) pruned with the STA options.")
    ] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="onnx | torchscript | pt2 (torch.export).")] = "onnx",
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output folder (default: the artifact folder, or ./<model>-sta-r<r1>).")
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (17 or newer).")] = 18,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Fix the batch size (default: dynamic).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch dimension (the default).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half-precision graph for GPU runtimes (STA scores stay float32).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda: where validation (and tracing) runs.")] = "auto",
    atol: Annotated[Optional[float], typer.Option("--atol", help="Max abs logit difference vs PyTorch fp32 (default 1e-4, fp16 5e-2).")] = None,
    allow_mismatch: Annotated[bool, typer.Option("--allow-mismatch", help="Keep the export when only atol/top-1 checks fail.")] = False,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the comparison with PyTorch (graph checks still run).")] = False,
    clip: Annotated[Optional[Path], typer.Option("--clip", help="Video to validate on (default: a synthetic clip).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it holds something else.")] = False,
    r1: c.R1 = None,
    first_group: c.FirstGroup = None,
    seed: c.Seed = None,
    order: c.Order = None,
    schedule: c.Schedule = None,
    similarity: c.Similarity = None,
    score: c.Score = None,
    revision: c.Revision = None,
    token: c.Token = None,
    num_heads: c.NumHeads = None,
    image_size: c.ImageSize = None,
    num_frames: c.NumFrames = None,
    mean: c.Mean = None,
    std: c.Std = None,
    json: c.Json = False,
):
    """Export a pruned model to ONNX, TorchScript or torch.export and validate it against PyTorch."""
    from ..export import export as run_export

    if batch is not None and dynamic_batch:
        raise StaError("--batch and --dynamic-batch exclude each other")
    if source is not None and model is not None:
        raise StaError("give either SOURCE or --model, not both")
    options = c.sta_options(first_group, seed, order, schedule, similarity, score)
    spec = source or model
    if spec is None:
        found = c.local_artifact("export")
        if found is None:
            raise StaError("no SOURCE: pass an artifact folder or --model, or run `sta prune` in this folder first")
        spec = str(found)
    try:
        with c.Steps(quiet=False) as log:
            report = run_export(
                spec, format, out, r1=r1, opset=opset, batch=batch, fp16=fp16, device=device, atol=atol,
                allow_mismatch=allow_mismatch, validate_outputs=not no_validate, clip=clip, force=force,
                revision=revision, token=token,
                arch=c.arch_options(num_heads, image_size, num_frames, mean, std), log=log, **options,
            )
    except ValidationFailed as e:
        failed = getattr(e, "report", None)
        if failed is not None:
            if json:
                c.print_json({**failed, "ok": False, "error": str(e)})
            else:
                print_block(failed)
            c.err.print("nothing was written")
        raise
    if json:
        c.print_json({**report, "ok": True})
        return
    print_block(report)
    print_files(report)


def print_block(report: dict) -> None:
    for note in report.get("notes", []):
        c.err.print(f"note: {note}")
    for line in report["validation_block"]:
        c.out.print(line.replace("\t", "    "), markup=False)


def print_files(report: dict) -> None:
    v = report["validation"]
    failed = [x for x in v["checks"] if not x["ok"]]
    if v.get("skipped"):
        head = "Validation skipped (--no-validate)"
    elif failed:
        head = f"The export succeeded with {len(failed)} warning(s)"
    else:
        head = "All good"
    c.out.print(f"{head}, model saved at: {report['files']['model']}", markup=False)
    c.out.print(f"config (labels, preprocessing, pruning settings): {report['files']['config']}", markup=False)
    if "weights" in report["files"]:
        c.out.print(f"external weights: {report['files']['weights']}", markup=False)
