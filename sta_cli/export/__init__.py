"""`sta export`: a pruned model as ONNX, TorchScript or torch.export program, validated against PyTorch.

Library use:

    from sta_cli.export import export
    report = export("videomae-base-sta-r64", "onnx")          # an artifact from `sta prune`
    report = export("videomae-base", "onnx", r1=64, out="x")  # or a model spec + STA options

The output folder gets the model file (model.onnx | model.pt | model.pt2) and a config.json with
labels, preprocessing, the pruning settings and what each export holds. Everything is written in
a temporary folder first and moved in place only after validation passed, so a failure leaves
nothing behind.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from .. import __version__
from ..errors import StaError, ValidationFailed
from ..io import artifact as art
from ..io import outputs
from ..io.artifact import model_config
from ..io.checkpoints import resolve
from ..log import Log, quiet
from ..models import build_from_source
from ..pruning import STAConfig
from ..runtime import ort
from ..runtime.loading import default_output, sample_clip, task_sta
from .graph import ExportModule, example_input, io_spec, output_names
from .quantize import DEFAULT_ACCURACY_CLIPS, DEFAULT_MAX_ACCURACY_DROP, INT8_FILE, check_quantize, write_int8
from .validate import Case, Check, enforce, format_block, validate

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt", "pt2": "model.pt2"}
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_ATOL = 1e-4  # fp32; Optimum's documented ViT/BERT tolerance
DEFAULT_ATOL_FP16 = 5e-2  # fp16 keeps ~3 significant digits; fp16 vs fp32 measured 0.015-0.036 on ViT-S r1=64
ARTIFACT_FILES = ("config.json", "sta.json", "model.safetensors")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_config(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def check_arguments(format: str, opset: int, batch: int | None, atol: float | None, device: str) -> None:
    """Everything that can be checked before loading a model."""
    if format not in FORMATS:
        raise StaError(f"unknown format {format!r} (choose {', '.join(FORMATS)})")
    if device not in DEVICES:
        raise StaError(f"unknown device {device!r} (choose {', '.join(DEVICES)})")
    if batch is not None and batch < 1:
        raise StaError(f"--batch must be at least 1, got {batch}")
    if atol is not None and not atol > 0:
        raise StaError(f"--atol must be positive, got {atol}")
    if format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise StaError(f"ONNX export needs {e.name}: pip install 'sta-cli[export]' (or [gpu])") from None
        from .onnx import check_opset

        check_opset(opset)


def torch_device(device: str) -> tuple[torch.device, str]:
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda"), ""
    note = "no CUDA device visible to PyTorch; running the PyTorch side on the CPU" if device == "cuda" else ""
    return torch.device("cpu"), note


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


def load_source(source: str | Path, r1: int | None, revision, token, sta_options: dict, log: Log, arch=None):
    """(model, artifact folder or None). An artifact keeps its own settings; a model spec takes r1 and options."""
    path = Path(str(source)).expanduser()
    artifact = path if art.is_artifact(path) else None
    given = {k: v for k, v in {"r1": r1, **sta_options}.items() if v is not None}
    if artifact is not None:
        if given:
            raise StaError(
                f"{artifact} is an artifact with its own pruning settings; STA options ({', '.join('--' + k.replace('_', '-') for k in given)}) "
                "apply to --model (or re-run sta prune)"
            )
    log(f"loading {source}")
    src = resolve(str(source), revision=revision, token=token, arch=arch)
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


def plan_output(out: Path | None, model: nn.Module, artifact: Path | None, force: bool) -> tuple[Path, str]:
    """Where the files go and how: ("into", folder) adds files to the model's own artifact, an sta
    export folder of the same model, or an empty folder; ("new", folder) creates the folder (or with
    --force replaces another sta output)."""
    if out is None:
        out = artifact if artifact is not None else default_output(model.source_name, model.sta.r1)
    out = Path(out)
    check_out(out, force)
    if not out.exists():
        return out, "new"
    kind = art.sta_kind(out)
    same_artifact = artifact is not None and out.resolve() == artifact.resolve()
    if same_artifact:
        return out, "into"
    if kind is None:  # check_out let only an empty folder through
        return out, "new"
    if kind == art.ARTIFACT:
        if not force:
            raise StaError(f"{out} is another sta artifact: export it with `sta export {out}`, or choose another -o")
        return out, "new"
    config = _read_config(out) or {}
    if (
        config.get("model") == model.cfg.to_dict()
        and config.get("sta", {}).get("r1") == model.sta.r1
        and all(config.get("sta", {}).get(k) == v for k, v in model.sta.to_dict().items())
    ):
        return out, "into"
    if not force:
        raise StaError(f"{out} holds an export of another model or other pruning settings (pass --force to replace it)")
    return out, "new"


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
    """The sample clip (synthetic unless `clip`) and random batches of 1 and 3 (or of the fixed batch)."""
    x, name = sample_clip(model, clip)
    name = "synthetic clip" if name == "synthetic" else f"clip {name}"
    if batch is not None and batch != x.shape[0]:
        x = x.repeat(batch, *([1] * (x.dim() - 1)))
    cases = [Case(f"{name} (batch {x.shape[0]})", x.to(dtype))]
    for b in [1, 3] if batch is None else [batch]:
        cases.append(Case(f"random batch of {b}", example_input(model, b, dtype, seed=100 + b)))
    return cases


@torch.no_grad()
def export(
    source: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    r1: int | None = None,
    opset: int = 18,
    batch: int | None = None,
    fp16: bool = False,
    device: str = "auto",
    atol: float | None = None,
    allow_mismatch: bool = False,
    validate_outputs: bool = True,
    clip: str | Path | None = None,
    force: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    arch=None,  # models.ArchOverrides: explicit input size, heads, normalisation
    log: Log = quiet,
    quantize: str | None = None,
    max_accuracy_drop: float | None = None,
    accuracy_clips: int | None = None,
    **sta_options,
) -> dict:
    """Export `source` (an artifact folder, or a model spec with r1 and STA options) and validate it.

    Returns the report (also stored in the output's config.json under "exports"). Raises StaError on
    bad input and ValidationFailed when the export does not reproduce PyTorch. quantize="int8" (ONNX)
    also writes model.int8.onnx, validated against the float32 model (see export/quantize.py).
    """
    check_arguments(format, opset, batch, atol, device)
    check_quantize(quantize, format, fp16, max_accuracy_drop, accuracy_clips)
    atol = atol if atol is not None else (DEFAULT_ATOL_FP16 if fp16 else DEFAULT_ATOL)
    if out is not None:  # fail before loading anything
        check_out(Path(out), force)
    model, artifact = load_source(source, r1, revision, token, sta_options, log, arch)
    folder, mode = plan_output(None if out is None else Path(out), model, artifact, force)
    dev, dev_note = torch_device(device)
    dtype = torch.float16 if fp16 else torch.float32
    # fp16 exports a copy (the reference stays float32); float32 exports the model itself: no second copy of the weights
    exported = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype=dtype)
    names = output_names(model)
    settings = pruning_settings(model)
    spec = io_spec(model, batch, dtype)
    filename = FORMATS[format]

    config = {**model_config(model), "format": art.EXPORT, "sta": settings}  # for a new folder
    files = [filename, filename + ".data"] + ([INT8_FILE, INT8_FILE + ".data"] if quantize else [])
    entries: dict[str, dict] = {}  # this run's entries of config.json's "exports"
    finalize = lambda tmp: write_records(tmp, folder, config, entries, files)  # noqa: E731
    if mode == "into":
        outputs.check_files(folder, files, force)
        note = replaced_note(folder, format) if force else None
        if note:
            log(note)
        writer = outputs.files_into(folder, files, ["config.json", art.MANIFEST], force, finalize=finalize)
    else:
        writer = outputs.new_folder(folder, force or _is_empty_dir(folder), finalize=finalize)
    report: dict = {
        "sta_version": __version__,
        "source": str(source),
        "format": format,
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch if batch is not None else "dynamic",
        "sta": settings,
        **spec,
    }
    notes = [n for n in [dev_note] if n]
    if fp16:
        notes.append("fp16 graph: STA's token scores are still computed in float32 (they decide which tokens are kept)")
    with writer as tmp:
        tmp = Path(tmp)
        path = tmp / filename
        t0 = time.perf_counter()
        extra: list[Check] = []
        if format == "onnx":
            from . import onnx as onnx_export

            log(
                f"exporting ONNX (opset {opset}, {'batch ' + str(batch) if batch else 'dynamic batch'}{', fp16' if fp16 else ''})"
            )
            onnx_export.export_onnx(
                exported,
                path,
                opset=opset,
                batch=batch,
                metadata=onnx_export.metadata_props(model, settings, spec),
                log=log,
            )
            report["opset"] = opset
            report["exporter"] = (
                f"torch.onnx.export(dynamo=True) (torch {torch.__version__}, onnxscript {_version('onnxscript')})"
            )
            log("checking the graph (onnx.checker, shape inference)")
            graph = onnx_export.graph_report(path, model, batch)
            report["graph"] = graph
            extra += graph_checks(graph, model)
            session, provider, ort_note = ort.session(path, device, low_memory=True)
            notes += [ort_note] if ort_note else []
            import onnxruntime

            report["runtime"] = f"onnxruntime {onnxruntime.__version__} ({provider})"
            run = lambda x: onnx_export.run_session(session, x)  # noqa: E731
        else:
            from . import torchscript as ts

            exported = exported.to(dev)
            if format == "torchscript":
                log(
                    f"tracing TorchScript ({'batch ' + str(batch) if batch else 'dynamic batch'}{', fp16' if fp16 else ''}, {dev})"
                )
                info = ts.export_torchscript(exported, path, batch=batch, config=config)
                report["exporter"] = f"torch.jit.trace (torch {torch.__version__})"
                loaded = ts.load_torchscript(path, dev)
            else:
                log(
                    f"torch.export ({'batch ' + str(batch) if batch else 'dynamic batch'}{', fp16' if fp16 else ''}, {dev})"
                )
                info = ts.export_pt2(exported, path, batch=batch, config=config)
                report["exporter"] = f"torch.export (torch {torch.__version__})"
                loaded = ts.load_pt2(path)
            report.update(info)
            report["runtime"] = f"torch {torch.__version__} ({report['exporter'].split(' (')[0]} program, {dev})"
            run = lambda x: [t for t in loaded(x.to(dev))]  # noqa: E731
        report["seconds_export"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        # The reference is always the float32 PyTorch model: for fp16 the question is whether the
        # half-precision graph reproduces the model (PyTorch's own fp16 CPU kernels round
        # differently from every runtime and are no better a reference).
        eager = ExportModule(model.to(dev)).eval()
        ref_run = lambda x: list(eager(x.to(dev, torch.float32)))  # noqa: E731
        report["reference"] = f"PyTorch float32 eager ({dev})"
        cases = validation_cases(model, batch, dtype, clip) if validate_outputs else []
        if validate_outputs:
            log(f"validating against {report['reference']} ({report['runtime']})")
            declared = onnx_export.declared_outputs(path) if format == "onnx" else None
            result = validate(run, ref_run, cases, names, declared, atol, fp16, extra, log=log)
        else:
            result = {
                "atol": atol,
                "max_abs_diff": None,
                "cases": [],
                "checks": [c.__dict__ for c in extra],
                "skipped": True,
            }
        report["seconds_validation"] = round(time.perf_counter() - t0, 2)
        report["validation"] = result
        report["notes"] = notes
        title = f"Validating {filename} ({report['dtype']}) with {report['runtime']} against {report['reference']}..."
        report["validation_block"] = format_block(result, title)
        try:
            enforce(result, allow_mismatch)
        except ValidationFailed as e:
            e.report = report  # the CLI prints the block before the error line
            raise
        entries[format] = {
            "file": filename,
            "dtype": report["dtype"],
            "batch": report["batch"],
            **({"opset": opset} if format == "onnx" else {}),
            "exporter": report["exporter"],
            "inputs": spec["inputs"],
            "outputs": spec["outputs"],
            "validated": validate_outputs,
            "max_abs_diff": result["max_abs_diff"],
            "sta_version": __version__,
        }
        if quantize:
            entries["onnx_int8"] = add_int8(
                report,
                path,
                model,
                ref_run,
                cases[0] if cases else None,
                names,
                batch,
                DEFAULT_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop,
                DEFAULT_ACCURACY_CLIPS if accuracy_clips is None else accuracy_clips,
                allow_mismatch,
                log,
            )
    report["output"] = str(folder)
    report["files"] = {"model": str(folder / filename), "config": str(folder / "config.json")}
    if (folder / (filename + ".data")).exists() and format == "onnx":
        report["files"]["weights"] = str(folder / (filename + ".data"))
    if quantize:
        report["files"]["int8"] = str(folder / INT8_FILE)
    return report


def write_records(tmp: Path, folder: Path, config: dict, entries: dict[str, dict], files: list[str]) -> None:
    """The writer's last step (under the publishing lock when adding to an existing folder): the
    folder's config.json with this run's export entries, and the manifest with the new files' checksums."""
    existing = art.sta_kind(folder) is not None and folder.is_dir()
    current = (_read_config(folder) if existing else None) or config
    current = {**current, "sta": config["sta"], "exports": {**(current.get("exports") or {}), **entries}}
    outputs.write_json(tmp / "config.json", current)
    new = [*files, "config.json"]
    old = (art.manifest(folder) or {}).get("files", {}) if existing else {}
    kind = (art.sta_kind(folder) if existing else None) or art.EXPORT
    art.write_manifest(tmp, kind, new, {k: v for k, v in old.items() if k not in new})


def add_int8(
    report: dict,
    path: Path,
    model,
    reference,
    case,
    names,
    batch,
    max_drop: float,
    clips: int,
    allow_mismatch: bool,
    log: Log,
) -> dict:
    """model.int8.onnx beside `path`, validated; its checks join the report's block. Returns its
    config.json entry."""
    entry, result, runtime = write_int8(path, model, reference, case, names, batch, max_drop, clips, log)
    report["int8"] = {**entry, "runtime": runtime, "validation": result}
    report["validation_block"] += format_block(
        result,
        f"Validating {INT8_FILE} (int8 linear layers, float32 STA scores) with {runtime} against {report['reference']}...",
    )
    try:
        enforce(result, allow_mismatch)
    except ValidationFailed as e:
        failed = ValidationFailed(f"{INT8_FILE}: {e}")
        failed.report = report  # the CLI prints the block before the error line
        raise failed from None
    return {**entry, "runtime": runtime, "sta_version": __version__}


def graph_checks(graph: dict, model: nn.Module) -> list[Check]:
    pruned = bool(model.stages)
    ops_ok = not graph["forbidden"] and (graph["topk"] > 0 or not pruned)
    forbidden = ", ".join(graph["forbidden"]) if graph["forbidden"] else "none of NonZero/Loop/If/Scatter*"
    checks = [
        Check("onnx.checker passes", True),
        Check(f"graph: opset {graph['opset']}, {graph['nodes']} nodes, {graph['topk']} TopK, {forbidden}", ops_ok),
    ]
    expected = model.tokens_per_stage
    # One kept_positions output per STA stage: an unpruned model has none, even where (Video Swin)
    # its token count changes from stage to stage by patch merging.
    planned = [s.tokens_out for s in model.stages]
    outputs_static = all(
        graph["outputs"].get(f"kept_positions_{s + 1}", [None, None])[1] == t for s, t in enumerate(planned)
    )
    # Every tensor numeric once the batch is fixed, and the kept_positions outputs declare the planned counts.
    static = not graph["not_static"] and outputs_static
    detail = " -> ".join(map(str, expected))
    if graph["not_static"]:
        detail += f"; not static: {', '.join(graph['not_static'][:3])}"
    checks.append(Check(f"token counts static under ONNX shape inference ({detail})", static))
    return checks


__all__ = ["DEFAULT_ATOL", "DEFAULT_ATOL_FP16", "FORMATS", "export"]
