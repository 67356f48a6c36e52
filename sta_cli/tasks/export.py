"""`sta export`: a pruned model as ONNX, TorchScript or torch.export program, validated against PyTorch.

Library use:

    from sta_cli.tasks.export import export
    report = export("videomae-base-sta-r64", "onnx")          # an artifact from `sta prune`
    report = export("videomae-base", "onnx", r1=64, out="x")  # or a model spec + STA options

The output folder gets the model file (model.onnx | model.pt | model.pt2) and a config.json with
labels, preprocessing, the pruning settings and what each export holds. Everything is written in
a temporary folder first and moved in place only after validation passed, so a failure leaves
nothing behind. The format writers live in `sta_cli/formats/`.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .. import __version__
from ..errors import StaError, ValidationFailed
from ..formats.graph import VALIDATION_BATCHES, ExportModule, example_input, io_spec, output_names
from ..formats.onnx import GraphReport
from ..formats.quantize import (
    DEFAULT_ACCURACY_CLIPS,
    DEFAULT_MAX_ACCURACY_DROP,
    INT8_FILE,
    Int8Export,
    check_quantize,
    write_int8,
)
from ..formats.validate import Case, Check, Checked, SkippedValidation, Validation, enforce, format_block, validate
from ..io import artifact as art
from ..io import outputs
from ..io.artifact import model_config
from ..io.checkpoints import resolve
from ..log import Log, quiet
from ..models import build_from_source
from ..models.overrides import ArchOverrides
from ..pruning import STAConfig
from ..runtime import ort
from ..runtime.device import check_device, runtime_device, torch_device
from ..runtime.loading import default_model, default_output, sample_clip, task_sta

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt", "pt2": "model.pt2"}
DEFAULT_ATOL = 1e-4  # fp32; Optimum's documented ViT/BERT tolerance
DEFAULT_ATOL_FP16 = 5e-2  # fp16 keeps ~3 significant digits; fp16 vs fp32 measured 0.015-0.036 on ViT-S r1=64
ARTIFACT_FILES = ("config.json", "sta.json", "model.safetensors")


@dataclass
class ExportFiles:
    model: str
    config: str
    weights: str | None = None  # ONNX external data, when the exporter wrote it
    int8: str | None = None


@dataclass
class ExportReport:
    """What `sta export` wrote and how it validated (the `--json` output)."""

    sta_version: str
    source: str
    format: str
    dtype: str
    batch: int | str  # an int, or "dynamic"
    sta: dict  # the pruning settings, per-stage plan and token counts
    inputs: list[dict]
    outputs: list[dict]
    opset: int | None = None  # ONNX only
    exporter: str = ""
    graph: GraphReport | None = None  # ONNX only
    tracer_warnings: list[str] | None = None  # TorchScript only
    runtime: str = ""
    seconds_export: float = 0.0
    reference: str = ""
    validation: Validation | SkippedValidation | None = None
    seconds_validation: float = 0.0
    notes: list[str] = field(default_factory=list)
    validation_block: list[str] = field(default_factory=list)  # what the CLI prints
    int8: Int8Export | None = None  # --quantize int8: the int8 graph and its validation
    output: str | None = None
    files: ExportFiles | None = None
    ok: bool = False
    error: str | None = None  # why validation failed (the report rides on the ValidationFailed)


@dataclass
class ExportRequest:
    """Everything `export` was asked, checked before any model is loaded."""

    format: str
    opset: int
    batch: int | None  # the graph's fixed batch dimension; None: dynamic
    fp16: bool
    device: str
    atol: float
    allow_mismatch: bool
    validate_outputs: bool
    clip: str | Path | None
    quantize: str | None
    max_accuracy_drop: float
    accuracy_clips: int

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.fp16 else torch.float32

    @property
    def filename(self) -> str:
        return FORMATS[self.format]

    def describe(self) -> str:
        return f"{'batch ' + str(self.batch) if self.batch else 'dynamic batch'}{', fp16' if self.fp16 else ''}"


@dataclass
class _Job:
    """One export in progress: the request, the model and where its files go."""

    request: ExportRequest
    model: nn.Module  # float32, the reference
    device: torch.device
    folder: Path
    report: ExportReport
    config: dict  # config.json for a new folder
    entries: dict[str, dict] = field(default_factory=dict)  # this run's entries of config.json's "exports"


def _read_config(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def check_arguments(format: str, opset: int, fixed_batch: int | None, atol: float | None, device: str) -> None:
    """Everything that can be checked before loading a model."""
    if format not in FORMATS:
        raise StaError(f"unknown format {format!r} (choose {', '.join(FORMATS)})")
    check_device(device)
    if fixed_batch is not None and fixed_batch < 1:
        raise StaError(f"--fixed-batch must be at least 1, got {fixed_batch}")
    if atol is not None and not atol > 0:
        raise StaError(f"--atol must be positive, got {atol}")
    if format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise StaError(f"ONNX export needs {e.name}: pip install 'sta-cli[export]' (or [gpu])") from None
        from ..formats.onnx import check_opset

        check_opset(opset)


def pruning_settings(model: nn.Module) -> dict:
    return {
        **model.sta.to_dict(),
        "stages": [dict(s.__dict__) for s in model.stages],
        "tokens_per_stage": model.tokens_per_stage,
        "scores_dtype": "float32",  # STA scores are computed in float32 whatever the model dtype
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def load_source(
    source: str | Path, r1: int | None, revision, token, sta_options: dict, log: Log, arch=None, before_build=None
):
    """(model, artifact folder or None). An artifact keeps its own settings; a model spec takes r1 and
    options. before_build(artifact): a last check once the source is resolved and its files verified,
    before the (slow) model build."""
    path = Path(str(source)).expanduser()
    artifact = path if art.is_artifact(path) else None
    given = {k: v for k, v in {"r1": r1, **sta_options}.items() if v is not None}
    if artifact is not None and given:
        raise StaError(
            f"{artifact} is an artifact with its own pruning settings; STA options ({', '.join('--' + k.replace('_', '-') for k in given)}) "
            "apply to --model (or re-run sta prune)"
        )
    log(f"loading {source}")
    src = resolve(str(source), revision=revision, token=token, arch=arch)
    if before_build is not None:
        before_build(artifact)
    base = STAConfig.from_dict(src.sta) if src.is_artifact else None
    model = build_from_source(src, STAConfig())
    model.set_sta(task_sta(base, model, r1, **sta_options))
    return model.eval(), artifact


def check_out(out: Path, force: bool) -> None:
    """Fail before loading anything if OUT can be neither created nor written into."""
    if not out.exists():
        outputs.check_folder_target(out, force)
    elif not out.is_dir():
        raise StaError(f"{out} exists and is not a folder")
    elif art.sta_kind(out) is None and any(out.iterdir()):
        outputs.check_folder_target(out, force=True)  # raises: says what the folder holds
    elif not os.access(out, os.W_OK | os.X_OK):
        raise StaError(f"cannot write to {out}: permission denied")


def plan_output(
    out: Path | None, model: nn.Module, artifact: Path | None, force: bool, digest: Callable[[], str]
) -> tuple[Path, str]:
    """Where the files go and how: ("into", folder) adds files to the model's own artifact, an sta
    export folder of the same model, or an empty folder; ("new", folder) creates the folder (or with
    --force replaces another sta output)."""
    if out is None:
        out = artifact if artifact is not None else default_output(model.card.source_name, model.sta.r1)
    out = Path(out)
    check_out(out, force)
    if not out.exists():
        return out, "new"
    kind = art.sta_kind(out)
    if artifact is not None and out.resolve() == artifact.resolve():
        return out, "into"
    if kind is None:  # check_out let only an empty folder through
        return out, "new"
    if kind == art.ARTIFACT:
        if not force:
            raise StaError(f"{out} is another sta artifact: export it with `sta export {out}`, or choose another -o")
        return out, "new"
    outputs.check_records(out, ["config.json", art.MANIFEST])  # a user's records: not sta's folder at all
    if _same_export(_read_config(out) or {}, model, digest):
        return out, "into"
    if not force:
        raise StaError(f"{out} holds an export of another model or other pruning settings (pass --force to replace it)")
    return out, "new"


def _same_export(config: dict, model: nn.Module, digest: Callable[[], str]) -> bool:
    """An export folder of this model (architecture, weights, labels, preprocessing) and STA settings:
    a new format joins its files; anything else is another model, replaced only with --force."""
    ours = json.loads(json.dumps(model_config(model)))  # as config.json holds it: lists, not tuples
    sta = config.get("sta", {})
    return (
        all(config.get(k) == ours[k] for k in ("architecture", "model", "labels", "preprocessing"))
        and config.get("weights_sha256") == digest()
        and all(sta.get(k) == v for k, v in model.sta.to_dict().items())
    )


def _is_empty_dir(folder: Path) -> bool:
    return folder.is_dir() and not any(folder.iterdir())


def replaced_note(folder: Path, format: str) -> str | None:
    """What an export with --force replaces in `folder`, in words."""
    old = ((_read_config(folder) or {}).get("exports") or {}).get(format)
    if not (folder / FORMATS[format]).exists():
        return None
    what = (
        f"{old.get('dtype', '?')}, batch {old.get('batch', '?')}, sta {old.get('sta_version', '?')}"
        if old
        else "not recorded"
    )
    return f"replacing {folder / FORMATS[format]} ({what})"


def validation_cases(model: nn.Module, batch: int | None, dtype: torch.dtype, clip) -> list[Case]:
    """The sample clip (synthetic unless `clip`) and random batches of 1 and 2 (or of the fixed batch)."""
    x, name = sample_clip(model, clip)
    name = "synthetic clip" if name == "synthetic" else f"clip {name}"
    if batch is not None and batch != x.shape[0]:
        x = x.repeat(batch, *([1] * (x.dim() - 1)))
    cases = [Case(f"{name} (batch {x.shape[0]})", x.to(dtype))]
    for b in VALIDATION_BATCHES if batch is None else [batch]:
        cases.append(Case(f"random batch of {b}", example_input(model, b, dtype, seed=100 + b)))
    return cases


@torch.no_grad()
def export(
    source: str | Path | None = None,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    r1: int | None = None,
    opset: int = 18,
    fixed_batch: int | None = None,
    fp16: bool = False,
    device: str = "auto",
    atol: float | None = None,
    allow_mismatch: bool = False,
    validate_outputs: bool = True,
    clip: str | Path | None = None,
    force: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    arch: ArchOverrides | None = None,  # explicit input size, heads, normalisation
    log: Log = quiet,
    quantize: str | None = None,
    max_accuracy_drop: float | None = None,
    accuracy_clips: int | None = None,
    **sta_options,
) -> ExportReport:
    """Export `source` (an artifact folder, or a model spec with r1 and STA options; None: the artifact
    `sta prune` left in the current folder) and validate it.

    Returns the report (also stored in the output's config.json under "exports"). Raises StaError on
    bad input and ValidationFailed (carrying the report as `.report`) when the export does not
    reproduce PyTorch. fixed_batch: the graph's batch dimension fixed to this size (default:
    dynamic); unlike profile's and eval's batch, it is a property of the file. quantize="int8" (ONNX) also writes model.int8.onnx, validated against the
    float32 model (see export/quantize.py). device: the one rule of runtime.device.
    """
    check_arguments(format, opset, fixed_batch, atol, device)
    arch = ArchOverrides.merged(arch, sta_options)
    source = default_model(source, demo=False, say=log)
    if source is None:
        raise StaError("no SOURCE: pass an artifact folder or --model, or run `sta prune` in this folder first")
    check_quantize(quantize, format, fp16, max_accuracy_drop, accuracy_clips)
    request = ExportRequest(
        format, opset, fixed_batch, fp16, device,
        atol if atol is not None else (DEFAULT_ATOL_FP16 if fp16 else DEFAULT_ATOL),
        allow_mismatch, validate_outputs, clip, quantize,
        DEFAULT_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop,
        DEFAULT_ACCURACY_CLIPS if accuracy_clips is None else accuracy_clips,
    )  # fmt: skip
    if out is not None:  # fail before loading anything
        check_out(Path(out), force)
    dev = torch_device(device)

    def refuse_files_held(artifact: Path | None) -> None:
        # An artifact exported into itself: refuse the files it already holds before the model build.
        if artifact is not None and (out is None or Path(out).resolve() == artifact.resolve()):
            check_replaceable(artifact, output_files(request), force)

    model, artifact = load_source(source, r1, revision, token, sta_options, log, arch, refuse_files_held)
    digest = functools.cache(lambda: art.weights_digest(model))  # only an export folder records it
    folder, mode = plan_output(None if out is None else Path(out), model, artifact, force, digest)
    job = _job(request, model, dev, folder, str(source))
    with _writer(job, mode, force, log, digest) as tmp:
        run = _write_format(job, Path(tmp) / request.filename, log)
        _validate(job, run, Path(tmp) / request.filename, log)
    _record_files(job)
    return job.report


def output_files(request: ExportRequest) -> list[str]:
    """The files an export writes into its folder (config.json and the manifest aside)."""
    name = request.filename
    return [name, name + ".data"] + ([INT8_FILE, INT8_FILE + ".data"] if request.quantize else [])


def check_replaceable(folder: Path, names: list[str], force: bool) -> None:
    """Files an export would write into `folder` that exist: replaced only with --force, and only if sta wrote them."""
    outputs.check_files(folder, names, force)
    foreign = sorted(set(names) & set(art.foreign_entries(folder)))
    if foreign:
        raise StaError(
            f"{folder} holds {', '.join(foreign)}, which sta did not write: sta never replaces it, even with --force"
        )


def _job(request: ExportRequest, model: nn.Module, dev: torch.device, folder: Path, source: str) -> _Job:
    settings = pruning_settings(model)
    spec = io_spec(model, request.batch, request.dtype)
    report = ExportReport(
        sta_version=__version__,
        source=source,
        format=request.format,
        dtype=str(request.dtype).removeprefix("torch."),
        batch=request.batch if request.batch is not None else "dynamic",
        sta=settings,
        inputs=spec["inputs"],
        outputs=spec["outputs"],
    )
    if request.fp16:
        report.notes.append(
            "fp16 graph: STA's token scores are still computed in float32 (they decide which tokens are kept)"
        )
    config = {**model_config(model), "format": art.EXPORT, "sta": settings}  # for a new folder
    return _Job(request, model, dev, folder, report, config)


def _writer(job: _Job, mode: str, force: bool, log: Log, digest: Callable[[], str]):
    """The output's transaction: a new folder, or new files into an existing one (config.json and
    the manifest rewritten last, under the folder's lock)."""
    files = output_files(job.request)

    def finalize(tmp):
        if mode == "into":
            write_records(tmp, job.folder, job.config, job.entries, files)
        else:  # this model's records only, even where --force replaces another sta folder
            write_records(tmp, None, {**job.config, "weights_sha256": digest()}, job.entries, files)

    if mode != "into":
        return outputs.new_folder(job.folder, force or _is_empty_dir(job.folder), finalize=finalize)
    check_replaceable(job.folder, files, force)
    note = replaced_note(job.folder, job.request.format) if force else None
    if note:
        log(note)
    return outputs.files_into(job.folder, files, ["config.json", art.MANIFEST], force, finalize=finalize)


def _write_format(job: _Job, path: Path, log: Log) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """Write the model file; returns how to run it for validation."""
    t0 = time.perf_counter()
    r = job.request
    if r.format == "onnx" and r.dtype == torch.float32:
        exported = job.model  # the exporter leaves the module as it is: no second copy of the weights
    else:
        exported = copy.deepcopy(job.model).to(dtype=r.dtype)  # the caller's model stays as it is
    if job.request.format == "onnx":
        run = _write_onnx(job, exported, path, log)
    else:
        run = _write_torch(job, exported.to(job.device), path, log)
    job.report.seconds_export = round(time.perf_counter() - t0, 2)
    return run


def _write_onnx(job: _Job, exported: nn.Module, path: Path, log: Log):
    from ..formats import onnx as onnx_export

    r, report, model = job.request, job.report, job.model
    log(f"exporting ONNX (opset {r.opset}, {r.describe()})")
    spec = {"inputs": report.inputs, "outputs": report.outputs}
    metadata = onnx_export.metadata_props(model, report.sta, spec)
    onnx_export.export_onnx(exported, path, opset=r.opset, batch=r.batch, metadata=metadata, log=log)
    report.opset = r.opset
    report.exporter = f"torch.onnx.export(dynamo=True) (torch {torch.__version__}, onnxscript {_version('onnxscript')})"
    log("checking the graph (onnx.checker, shape inference)")
    report.graph = onnx_export.graph_report(path, model, r.batch)
    session, provider, note = ort.session(path, runtime_device(r.device), low_memory=True)
    report.notes += [note] if note else []
    import onnxruntime

    report.runtime = f"onnxruntime {onnxruntime.__version__} ({provider})"
    return lambda x: onnx_export.run_session(session, x)


def _write_torch(job: _Job, exported: nn.Module, path: Path, log: Log):
    from ..formats import torchscript as ts

    r, report, dev = job.request, job.report, job.device
    if r.format == "torchscript":
        log(f"tracing TorchScript ({r.describe()}, {dev})")
        report.tracer_warnings = ts.export_torchscript(exported, path, batch=r.batch, config=job.config)[
            "tracer_warnings"
        ]
        report.exporter = f"torch.jit.trace (torch {torch.__version__})"
        loaded = ts.load_torchscript(path, dev)
    else:
        log(f"torch.export ({r.describe()}, {dev})")
        ts.export_pt2(exported, path, batch=r.batch, config=job.config)
        report.exporter = f"torch.export (torch {torch.__version__})"
        loaded = ts.load_pt2(path)
    report.runtime = f"torch {torch.__version__} ({report.exporter.split(' (')[0]} program, {dev})"
    return lambda x: list(loaded(x.to(dev)))


def _validate(job: _Job, run, path: Path, log: Log) -> None:
    """Compare the written file with the float32 PyTorch model; record this run's config.json entry.

    The reference is always the float32 PyTorch model: for fp16 the question is whether the
    half-precision graph reproduces the model (PyTorch's own fp16 CPU kernels round differently
    from every runtime and are no better a reference)."""
    r, report, model, dev = job.request, job.report, job.model, job.device
    t0 = time.perf_counter()
    eager = ExportModule(model.to(dev)).eval()
    reference = lambda x: list(eager(x.to(dev, torch.float32)))  # noqa: E731
    report.reference = f"PyTorch float32 eager ({dev})"
    names = output_names(model)
    extra = graph_checks(report.graph, model) if report.graph is not None else []
    cases = validation_cases(model, r.batch, r.dtype, r.clip) if r.validate_outputs else []
    if r.validate_outputs:
        log(f"validating against {report.reference} ({report.runtime})")
        declared = _declared_outputs(path) if r.format == "onnx" else None
        result = validate(run, reference, cases, names, declared, r.atol, r.fp16, extra, log=log)
    else:
        result = SkippedValidation(r.atol, checks=extra)
    report.seconds_validation = round(time.perf_counter() - t0, 2)
    report.validation = result
    title = f"Validating {r.filename} ({report.dtype}) with {report.runtime} against {report.reference}..."
    report.validation_block = format_block(result, title)
    _enforce(result, r.allow_mismatch, report)
    job.entries[r.format] = _entry(job, result)
    if r.quantize:
        job.entries["onnx_int8"] = add_int8(job, path, reference, cases[0] if cases else None, log)


def _declared_outputs(path: Path):
    from ..formats.onnx import declared_outputs

    return declared_outputs(path)


def _enforce(result: Checked, allow_mismatch: bool, report: ExportReport, prefix: str = "") -> None:
    try:
        enforce(result, allow_mismatch)
    except ValidationFailed as e:
        failed = ValidationFailed(f"{prefix}{e}")
        failed.report = report  # the CLI prints the block before the error line
        report.error = str(failed)
        raise failed from None


def _entry(job: _Job, result: Validation | SkippedValidation) -> dict:
    """This export's entry of config.json's "exports"."""
    r, report = job.request, job.report
    allowed = [c.message for c in result.checks if not c.ok and c.kind == "mismatch"]  # kept: --allow-mismatch
    return {
        "file": r.filename,
        "dtype": report.dtype,
        "batch": report.batch,
        **({"opset": r.opset} if r.format == "onnx" else {}),
        "exporter": report.exporter,
        "inputs": report.inputs,
        "outputs": report.outputs,
        "validated": r.validate_outputs,
        "atol": result.atol,
        "max_abs_diff": result.max_abs_diff,
        **({"mismatches_allowed": allowed} if allowed else {}),
        "sta_version": __version__,
    }


def _record_files(job: _Job) -> None:
    folder, name, report = job.folder, job.request.filename, job.report
    report.output = str(folder)
    report.files = ExportFiles(model=str(folder / name), config=str(folder / "config.json"))
    if job.request.format == "onnx" and (folder / (name + ".data")).exists():
        report.files.weights = str(folder / (name + ".data"))
    if job.request.quantize:
        report.files.int8 = str(folder / INT8_FILE)
    report.ok = True


def write_records(tmp: Path, folder: Path | None, config: dict, entries: dict[str, dict], files: list[str]) -> None:
    """The writer's last step (under the publishing lock when adding to an existing folder): the
    folder's config.json with this run's export entries, and the manifest with the new files'
    checksums. folder None: a new folder, whose records are `config` and this run's alone."""
    existing = folder is not None and art.sta_kind(folder) is not None
    current = (_read_config(folder) if existing else None) or config
    current = {**current, "sta": config["sta"], "exports": {**(current.get("exports") or {}), **entries}}
    outputs.write_json(tmp / "config.json", current)
    new = [*files, "config.json"]
    old = (art.manifest(folder) or {}).get("files", {}) if existing else {}
    kind = (art.sta_kind(folder) if existing else None) or art.EXPORT
    art.write_manifest(tmp, kind, new, {k: v for k, v in old.items() if k not in new})


def add_int8(job: _Job, path: Path, reference, case, log: Log) -> dict:
    """model.int8.onnx beside `path`, validated; its checks join the report's block. Returns its
    config.json entry."""
    r, report = job.request, job.report
    names = output_names(job.model)
    int8 = write_int8(path, job.model, reference, case, names, r.batch, r.max_accuracy_drop, r.accuracy_clips, log)
    report.int8 = int8
    title = f"Validating {INT8_FILE} (int8 linear layers, float32 STA scores) with {int8.runtime} against {report.reference}..."
    report.validation_block += format_block(int8.validation, title)
    _enforce(int8.validation, r.allow_mismatch, report, prefix=f"{INT8_FILE}: ")
    return int8.config_entry(__version__)


def graph_checks(graph: GraphReport, model: nn.Module) -> list[Check]:
    pruned = bool(model.stages)
    ops_ok = not graph.forbidden and (graph.topk > 0 or not pruned)
    forbidden = ", ".join(graph.forbidden) if graph.forbidden else "none of NonZero/Loop/If/Scatter*"
    checks = [
        Check("onnx.checker passes", True),
        Check(f"graph: opset {graph.opset}, {graph.nodes} nodes, {graph.topk} TopK, {forbidden}", ops_ok),
    ]
    expected = model.tokens_per_stage
    # One kept_positions output per STA stage: an unpruned model has none, even where (Video Swin)
    # its token count changes from stage to stage by patch merging.
    planned = [s.tokens_out for s in model.stages]
    outputs_static = all(
        graph.outputs.get(f"kept_positions_{s + 1}", [None, None])[1] == t for s, t in enumerate(planned)
    )
    # Every tensor numeric once the batch is fixed, and the kept_positions outputs declare the planned counts.
    static = not graph.not_static and outputs_static
    detail = " -> ".join(map(str, expected))
    if graph.not_static:
        detail += f"; not static: {', '.join(graph.not_static[:3])}"
    checks.append(Check(f"token counts static under ONNX shape inference ({detail})", static))
    return checks
