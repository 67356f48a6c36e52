"""int8 ONNX: ONNX Runtime's dynamic quantisation of the linear layers, STA's scoring left in float32.

`sta export --format onnx --quantize int8` writes `model.int8.onnx` beside `model.onnx`. Only the
MatMul / Gemm nodes whose second input is a stored weight (the linear layers: qkv, attention
projection, MLP, head) become DynamicQuantizeMatMul / MatMulInteger; every product of two activations
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
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import StaError
from .validate import Check

INT8_FILE = "model.int8.onnx"
QUANTIZE_CHOICES = ("int8",)
LINEAR_OPS = ("MatMul", "Gemm")
INT8_OPS = ("DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeLinear")


def check_quantize(quantize: str | None, format: str, fp16: bool) -> None:
    if quantize is None:
        return
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
    file: str
    linear_layers: int  # MatMul/Gemm nodes with a stored weight, all handed to the quantiser
    quantized: int  # nodes ONNX Runtime turned into integer ops
    float_matmuls: int  # activation x activation MatMuls (attention, STA scores): must stay float32
    weight_type: str = "int8 per channel"
    activations: str = "uint8 per tensor, dynamic"
    bytes: int = 0


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
    try:
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=list(LINEAR_OPS), nodes_to_quantize=linear,
            per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=large,
        )
    except Exception as e:  # the quantiser raises plain Exceptions and onnx errors
        raise StaError(f"int8 quantisation failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    finally:
        quiet.setLevel(level)
    ops = collections.Counter(n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node)
    quantized = ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulInteger", 0) + ops.get("MatMulIntegerToFloat", 0)
    return QuantizeReport(dst.name, len(linear), quantized, activation, bytes=dst.stat().st_size)


def int8_graph_checks(path: Path, report: QuantizeReport) -> list[Check]:
    """Every integer op takes a stored weight; every activation x activation MatMul stayed float32."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    constants = _constants(proto.graph)
    ints = [n for n in proto.graph.node if n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat")]
    weights_only = all(n.input[1] in constants for n in ints)
    float_left = sum(1 for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] not in constants)
    scores_float = float_left == report.float_matmuls
    return [
        Check(f"int8: {report.quantized} of {report.linear_layers} linear layers quantised, weights only", weights_only and report.quantized > 0),
        Check(f"int8: {float_left} activation x activation MatMuls (attention, STA scores) still float32", scores_float),
    ]
