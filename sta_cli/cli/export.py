"""`sta export`: a pruned model as ONNX / TorchScript / torch.export, validated against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import StaError, ValidationFailed
from ..formats.validate import SkippedValidation
from ..tasks.export import ExportReport
from ..tasks.export import export as export_model
from . import common as c
from . import options as o

# --- export's own options ------------------------------------------------------------------------

Source = Annotated[
    str | None,
    typer.Argument(
        metavar="SOURCE",
        show_default=False,
        help="Artifact folder from `sta prune` (default: the one in the current folder), or a model spec.",
    ),
]
ModelSpec = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        show_default=False,
        help=f"Instead of SOURCE. {o.MODEL_HELP} A model spec is pruned with the STA options.",
    ),
]
Format = Annotated[
    str, typer.Option("--format", "-f", metavar="FORMAT", help="onnx | torchscript | pt2 (torch.export).")
]
Out = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        metavar="FOLDER",
        show_default="the artifact folder, or ./<model>-sta-r<r1>",
        help="Output folder.",
    ),
]
Opset = Annotated[int, typer.Option("--opset", metavar="INT", help="ONNX opset (17 or newer).")]
FixedBatch = Annotated[
    int | None,
    typer.Option(
        "--fixed-batch", metavar="INT", show_default="dynamic", help="Fix the exported graph's batch dimension."
    ),
]
DynamicBatch = Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch dimension (the default).")]
Fp16 = Annotated[bool, typer.Option("--fp16", help="Half-precision graph for GPU runtimes (STA scores stay float32).")]
Atol = Annotated[
    float | None,
    typer.Option(
        "--atol", metavar="FLOAT", show_default="1e-4; fp16: 5e-2", help="Max abs logit difference vs PyTorch fp32."
    ),
]
AllowMismatch = Annotated[
    bool, typer.Option("--allow-mismatch", help="Keep the export when only atol/top-1 checks fail.")
]
NoValidate = Annotated[
    bool, typer.Option("--no-validate", help="Skip the comparison with PyTorch (graph checks still run).")
]
Quantize = Annotated[
    str | None,
    typer.Option(
        "--quantize",
        metavar="int8",
        show_default="none",
        help="int8: also write model.int8.onnx (ONNX Runtime dynamic quantisation of the linear layers; STA scores stay float32).",
    ),
]
MaxAccuracyDrop = Annotated[
    float | None,
    typer.Option(
        "--max-accuracy-drop",
        metavar="POINTS",
        show_default="2",
        help="int8: fail past this drop of held-out top-1 vs float32 unpruned, in points (demo model only).",
    ),
]
AccuracyClips = Annotated[
    int | None,
    typer.Option(
        "--accuracy-clips",
        metavar="INT",
        show_default="256",
        help="int8: held-out demo clips to measure top-1 on (0 skips).",
    ),
]


@c.handle_errors
@o.arch_options
@o.sta_options
def export(
    source: Source = None,
    model: ModelSpec = None,
    format: Format = "onnx",
    out: Out = None,
    opset: Opset = 18,
    fixed_batch: FixedBatch = None,
    dynamic_batch: DynamicBatch = False,
    fp16: Fp16 = False,
    device: o.Device = "auto",
    atol: Atol = None,
    allow_mismatch: AllowMismatch = False,
    no_validate: NoValidate = False,
    clip: o.Clip = None,
    force: o.Force = False,
    quantize: Quantize = None,
    max_accuracy_drop: MaxAccuracyDrop = None,
    accuracy_clips: AccuracyClips = None,
    r1: o.R1 = None,
    revision: o.Revision = None,
    token: o.Token = None,
    json: o.Json = False,
    sta_options: dict | None = None,
    arch=None,
):
    """Export a pruned model to ONNX, TorchScript or torch.export and validate it against PyTorch."""
    if fixed_batch is not None and dynamic_batch:
        raise StaError("--fixed-batch and --dynamic-batch exclude each other")
    spec = _source_or_model(source, model)
    try:
        with c.Steps(quiet=False) as log:
            report = export_model(
                spec, format, out, r1=r1, opset=opset, fixed_batch=fixed_batch, fp16=fp16, device=device,
                atol=atol, allow_mismatch=allow_mismatch, validate_outputs=not no_validate, clip=clip, force=force,
                revision=revision, token=token, arch=arch, log=log, quantize=quantize,
                max_accuracy_drop=max_accuracy_drop, accuracy_clips=accuracy_clips, **sta_options,
            )  # fmt: skip
    except ValidationFailed as e:
        _print_failed(e, json)
        raise
    if json:
        c.print_json(report)
        return
    print_block(report)
    print_files(report)


def _source_or_model(source: str | None, model: str | None) -> str | None:
    """What to export: SOURCE or --model, else the artifact `sta prune` left in the current folder."""
    if source is not None and model is not None:
        raise StaError("give either SOURCE or --model, not both")
    return c.default_model("export", source or model)  # None: the task's "no SOURCE" line


def _print_failed(e: ValidationFailed, json: bool) -> None:
    """The report of an export that failed validation (what was checked), before the error line."""
    failed = getattr(e, "report", None)
    if failed is None:
        return
    if json:
        c.print_json(failed)
    else:
        print_block(failed)
    c.err.print("nothing was written")


def print_block(report: ExportReport) -> None:
    for note in report.notes:
        c.err.print(f"note: {note}")
    for line in report.validation_block:
        c.out.print(line.replace("\t", "    "), markup=False)


def print_files(report: ExportReport) -> None:
    v, files = report.validation, report.files
    checks = v.checks + (report.int8.validation.checks if report.int8 else [])
    failed = [x for x in checks if not x.ok]
    if isinstance(v, SkippedValidation):
        head = "Validation skipped (--no-validate)"
    elif failed:
        allowed = sum(x.kind == "mismatch" for x in failed)
        kept = f"{allowed} mismatch(es) kept by --allow-mismatch" if allowed else ""
        warned = f"{len(failed) - allowed} warning(s)" if len(failed) > allowed else ""
        head = f"The export succeeded with {' and '.join(filter(None, [kept, warned]))}"
    else:
        head = "All good"
    c.out.print(f"{head}, model saved at: {files.model}", markup=False)
    c.out.print(f"config (labels, preprocessing, pruning settings): {files.config}", markup=False)
    if files.weights:
        c.out.print(f"external weights: {files.weights}", markup=False)
    if files.int8:
        c.out.print(f"int8 model (linear layers int8, STA scores float32): {files.int8}", markup=False)
