"""int8 ONNX: ONNX Runtime's dynamic quantisation of the linear layers, STA's scoring left in float32.

`sta export --format onnx --quantize int8` writes `model.int8.onnx` beside `model.onnx`. Only the
MatMul / Gemm nodes whose second input is a stored weight (the linear layers: qkv, attention
projection, MLP, head) are handed to the quantiser; the MatMuls become MatMulInteger (a Gemm head
stays float32: the dynamic scheme has no integer Gemm). Every product of two activations
(attention scores, attention x values, STA's token similarities and its transition matrix) stays a
float32 MatMul, so the scores that decide which tokens are kept are float32 arithmetic on the
(int8-approximated) block outputs. Weights are quantised per output channel to signed int8;
activations per tensor at run time (ONNX Runtime's dynamic scheme: no calibration data needed).

The int8 graph is validated against the float32 PyTorch model (validate_int8): kept-set overlap and
the near-tie rule on the kept positions, top-1 agreement and logit cosine on the sample clip, and,
for the packaged demo, top-1 accuracy on its held-out clips against the float32 unpruned model.
"""

from __future__ import annotations

import collections
import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import StaError
from ..runtime import ort
from .validate import (
    TIE_TOL,
    Case,
    Check,
    Rerun,
    StageScores,
    _set_overlap,
    forced_reference,
    near_tie_check,
    recording_scores,
    stage_scores,
)

INT8_FILE = "model.int8.onnx"
QUANTIZE_CHOICES = ("int8",)
LINEAR_OPS = ("MatMul", "Gemm")
INT8_OPS = ("DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat")


def check_quantize(
    quantize: str | None,
    format: str,
    fp16: bool,
    max_accuracy_drop: float | None = None,
    accuracy_clips: int | None = None,
) -> None:
    if quantize is None:
        if max_accuracy_drop is not None or accuracy_clips is not None:
            raise StaError("--max-accuracy-drop and --accuracy-clips apply to --quantize int8")
        return
    if max_accuracy_drop is not None and not max_accuracy_drop >= 0:
        raise StaError(f"--max-accuracy-drop must be 0 or more (percentage points), got {max_accuracy_drop}")
    if accuracy_clips is not None and accuracy_clips < 0:
        raise StaError(f"--accuracy-clips must be 0 or more, got {accuracy_clips}")
    if quantize not in QUANTIZE_CHOICES:
        raise StaError(f"unknown --quantize {quantize!r} (choose {', '.join(QUANTIZE_CHOICES)})")
    if format != "onnx":
        raise StaError("--quantize int8 applies to --format onnx (ONNX Runtime's dynamic quantisation)")
    if fp16:
        raise StaError("--quantize int8 quantises the float32 graph; drop --fp16")


def _constants(graph) -> set[str]:
    names = {i.name for i in graph.initializer}
    return names | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def linear_nodes(proto) -> tuple[list[str], int]:
    """(names of MatMul/Gemm nodes with a stored weight, number of activation x activation MatMuls)."""
    constants = _constants(proto.graph)
    linear, activation = [], 0
    for n in proto.graph.node:
        if n.op_type in LINEAR_OPS:
            if n.input[1] in constants:
                linear.append(n.name)
            else:
                activation += 1
    return linear, activation


@dataclass
class QuantizeReport:
    linear_layers: int  # MatMul/Gemm nodes with a stored weight, all handed to the quantiser
    quantized: int  # nodes ONNX Runtime turned into integer ops
    float_matmuls: int  # activation x activation MatMuls (attention, STA scores): must stay float32
    weight_type: str = "int8 per channel"
    activations: str = "uint8 per tensor, dynamic"
    bytes: int = 0


def _without_value_info(proto, src: Path) -> Path:
    """`proto` without the exporter's recorded intermediate shapes, saved beside `src` (so that its
    external weights, if any, resolve). The quantiser infers shapes again after rewriting weights;
    older ONNX Runtime releases (seen with 1.23.2, not with 1.32) fail when a recorded shape
    disagrees with the new inference ("Inferred shape and existing shape differ")."""
    import onnx

    del proto.graph.value_info[:]
    path = src.parent / f".{src.stem}.shapeless.onnx"
    onnx.save(proto, str(path))
    return path


def quantize_int8(src: Path, dst: Path) -> QuantizeReport:
    """Dynamic int8 quantisation of `src`'s linear layers into `dst`; everything else unchanged."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src), load_external_data=False)
    linear, activation = linear_nodes(proto)
    if not linear:
        raise StaError(f"{src.name} has no linear layers with stored weights to quantise")
    large = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    quiet = logging.getLogger()  # the quantiser logs every node it skips at WARNING
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    shapeless = _without_value_info(proto, src)
    try:
        quantize_dynamic(
            str(shapeless),
            str(dst),
            op_types_to_quantize=list(LINEAR_OPS),
            nodes_to_quantize=linear,
            per_channel=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=large,
        )
    except Exception as e:  # the quantiser raises plain Exceptions and onnx errors
        raise StaError(
            f"int8 quantisation failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        ) from e
    finally:
        quiet.setLevel(level)
        shapeless.unlink(missing_ok=True)
    ops = collections.Counter(n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node)
    quantized = sum(ops.get(op, 0) for op in INT8_OPS)
    return QuantizeReport(len(linear), quantized, activation, bytes=dst.stat().st_size)


def int8_graph_checks(path: Path, report: QuantizeReport) -> list[Check]:
    """Every integer op takes a stored weight; every activation x activation MatMul stayed float32."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    constants = _constants(proto.graph)
    ints = [n for n in proto.graph.node if n.op_type in INT8_OPS]
    weights_only = all(n.input[1] in constants for n in ints)
    float_left = sum(1 for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] not in constants)
    scores_float = float_left == report.float_matmuls
    return [
        Check(
            f"int8: {report.quantized} of {report.linear_layers} linear layers quantised, weights only",
            weights_only and report.quantized > 0,
        ),
        Check(
            f"int8: {float_left} activation x activation MatMuls (attention, STA scores) still float32", scores_float
        ),
    ]


# --- validation against the float32 PyTorch model -------------------------------------------------

MIN_COSINE = 0.99  # logits of the int8 graph vs float32 PyTorch on the sample clip (demo: 0.99999)
DEFAULT_MAX_ACCURACY_DROP = 2.0  # percentage points of held-out top-1, int8+STA vs float32 unpruned
DEFAULT_ACCURACY_CLIPS = 256


@dataclass
class HeldoutAccuracy:
    """Top-1 (%) on the demo's held-out clips, int8 + STA vs float32 unpruned."""

    clips: int
    float32_unpruned: float
    int8_sta: float
    drop: float  # percentage points: float32_unpruned - int8_sta


@dataclass
class Int8Validation:
    """What `validate_int8` found (enforce / format_block read it like validate's result)."""

    tie_tol: float
    min_cosine: float
    logit_cosine: float | None  # None: the output shapes differed
    cases: list[str]
    accuracy: HeldoutAccuracy | None  # None: not the demo model, or --accuracy-clips 0
    max_accuracy_drop: float
    checks: list[Check]
    ok: bool | None = None  # set by `enforce`


@dataclass
class SkippedInt8Validation:
    """--no-validate: only the int8 graph checks."""

    cases: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    skipped: bool = True
    accuracy: None = None
    ok: bool | None = None  # set by `enforce`


@dataclass
class Int8Export:
    """model.int8.onnx: how it was made and how it validated (the export report's `int8`)."""

    file: str
    dtype: str
    batch: int | str  # an int, or "dynamic"
    quantization: QuantizeReport
    validated: bool
    logit_cosine: float | None
    accuracy: HeldoutAccuracy | None
    runtime: str
    validation: Int8Validation | SkippedInt8Validation

    def config_entry(self, sta_version: str) -> dict:
        """Its entry of config.json's "exports": everything but the validation's details."""
        entry = {k: v for k, v in asdict(self).items() if k != "validation"}
        return {**entry, "sta_version": sta_version}


def int8_case_checks(
    case: Case,
    names: list[str],
    ours: list[torch.Tensor],
    ref: list[torch.Tensor],
    scores: list[StageScores],
    rerun: Rerun | None = None,
) -> tuple[list[Check], float | None]:
    """Shapes, kept positions (near-tie rule at int8's tolerance, stage by stage; overlap reported), top-1,
    logit cosine."""
    checks = [
        Check(
            f"{n}: {tuple(o.shape)} {'matches' if o.shape == r.shape else 'does not match'} {tuple(r.shape)}",
            o.shape == r.shape,
            "error",
            case.label,
        )
        for n, o, r in zip(names, ours, ref)
    ]
    if not all(c.ok for c in checks):
        return checks, None
    kept_o, kept_r = [o.long().cpu() for o in ours[1:]], [r.long().cpu() for r in ref[1:]]
    if kept_o:
        overlap = ", ".join(
            f"stage {s + 1}: {100 * _set_overlap(o, r):.1f}%" for s, (o, r) in enumerate(zip(kept_o, kept_r))
        )
        checks += [
            replace(c, case=case.label, message=f"{c.message}; kept-set overlap with float32 PyTorch: {overlap}")
            for c in near_tie_check(kept_o, kept_r, scores, TIE_TOL["int8"], rerun)
        ]
    logits_o, logits_r = ours[0].float().cpu(), ref[0].float().cpu()
    same = torch.equal(logits_o.argmax(-1), logits_r.argmax(-1))
    checks.append(
        Check(f"top-1 {'identical to' if same else 'differs from'} float32 PyTorch", same, "mismatch", case.label)
    )
    cosine = float(F.cosine_similarity(logits_o, logits_r, dim=-1).min())
    checks.append(
        Check(
            f"logit cosine with float32 PyTorch {cosine:.5f} (at least {MIN_COSINE})",
            cosine >= MIN_COSINE,
            "mismatch",
            case.label,
        )
    )
    return checks, cosine


@torch.no_grad()
def heldout_accuracy(
    run: Callable[[torch.Tensor], list[torch.Tensor]], model: nn.Module, clips: int, batch: int | None
) -> HeldoutAccuracy:
    """Top-1 (%) on the demo's held-out test clips: the int8 graph (with STA) vs float32 unpruned PyTorch."""
    from ..demo import clips_to_input, make_dataset
    from ..pruning import STAConfig

    chunk = batch or 32
    clips -= clips % chunk if batch else 0  # a fixed-batch graph takes whole batches only
    video, labels = make_dataset(clips, "test")
    x, labels = clips_to_input(video, model.preprocessing), torch.as_tensor(np.asarray(labels))
    unpruned = copy.deepcopy(model).cpu().eval()
    unpruned.set_sta(STAConfig())
    ref = torch.cat([unpruned(x[i : i + chunk]).argmax(-1) for i in range(0, clips, chunk)])
    ours = torch.cat([run(x[i : i + chunk])[0].argmax(-1) for i in range(0, clips, chunk)])
    acc_ref, acc_ours = 100 * (ref == labels).float().mean().item(), 100 * (ours == labels).float().mean().item()
    return HeldoutAccuracy(clips, round(acc_ref, 2), round(acc_ours, 2), round(acc_ref - acc_ours, 2))


def validate_int8(
    run,
    reference,
    case: Case,
    names: list[str],
    model: nn.Module,
    extra: list[Check],
    *,
    max_accuracy_drop: float,
    accuracy_clips: int,
    batch: int | None,
    log,
) -> Int8Validation:
    """All int8 checks: the graph's (`extra`), the sample clip's and, for the demo, held-out accuracy."""
    from ..demo import is_demo_model

    checks = list(extra)
    with recording_scores() as record:
        ref = reference(case.x)
    rerun = forced_reference(reference, case, log)
    case_checks, cosine = int8_case_checks(case, names, run(case.x), ref, [stage_scores(e) for e in record], rerun)
    checks += case_checks
    accuracy = None
    if accuracy_clips > 0 and is_demo_model(model):
        log(f"int8: top-1 on {accuracy_clips} held-out demo clips (int8 + STA vs float32 unpruned)")
        accuracy = heldout_accuracy(run, model, accuracy_clips, batch)
        ok = accuracy.drop <= max_accuracy_drop
        checks.append(
            Check(
                f"held-out top-1 on {accuracy.clips} demo clips: int8 + STA {accuracy.int8_sta:.2f}%, float32 unpruned "
                f"{accuracy.float32_unpruned:.2f}% (drop {accuracy.drop:+.2f} points, at most {max_accuracy_drop:g})",
                ok,
                "error",
                "held-out clips",
            )
        )
    return Int8Validation(TIE_TOL["int8"], MIN_COSINE, cosine, [case.label], accuracy, max_accuracy_drop, checks)


def write_int8(
    src: Path,
    model: nn.Module,
    reference,
    case: Case | None,
    names: list[str],
    batch: int | None,
    max_accuracy_drop: float,
    accuracy_clips: int,
    log,
) -> Int8Export:
    """Quantise `src` into model.int8.onnx beside it and validate it (case None: graph checks only)."""
    import onnxruntime

    from . import onnx as onnx_export

    dst = src.parent / INT8_FILE
    log("quantising the linear layers to int8 (ONNX Runtime dynamic quantisation)")
    info = quantize_int8(src, dst)
    extra = int8_graph_checks(dst, info)
    session, provider, _ = ort.session(dst, "cpu")  # the integer kernels are the CPU provider's
    run = lambda x: onnx_export.run_session(session, x)  # noqa: E731
    runtime = f"onnxruntime {onnxruntime.__version__} ({provider})"
    if case is None:
        result = SkippedInt8Validation(checks=extra)
    else:
        log(f"validating {INT8_FILE} against PyTorch float32 eager ({runtime})")
        result = validate_int8(
            run,
            reference,
            case,
            names,
            model,
            extra,
            max_accuracy_drop=max_accuracy_drop,
            accuracy_clips=accuracy_clips,
            batch=batch,
            log=log,
        )
    return Int8Export(
        file=INT8_FILE,
        dtype="int8 linear layers, float32 activations and STA scores",
        batch=batch or "dynamic",
        quantization=info,
        validated=case is not None,
        logit_cosine=None if case is None else result.logit_cosine,
        accuracy=result.accuracy,
        runtime=runtime,
        validation=result,
    )
