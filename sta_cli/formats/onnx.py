"""ONNX export with torch's dynamo exporter (torch.export + onnxscript), graph checks, ONNX Runtime.

Why the dynamo exporter: on this model it gives a graph with the batch symbolic and every token
count a constant (STA's static shapes survive), and it lets us map the stable sort STA uses to
ONNX TopK. The legacy TorchScript exporter (`dynamo=False`, deprecated since torch 2.9) bakes the
example batch size into Expand/Concat shapes (a dynamic-batch graph fails at runtime for another
batch), leaves the token counts after each stage symbolic, and has no symbolic for the stable
sort, so it is not offered.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import StaError
from ..log import Log, quiet
from .graph import BATCH_DIM, INPUT_NAME, TRACE_BATCH, ExportModule, example_input, output_names, root_cause, warm_up
from .validate import release_memory

DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization is a single op from 17 on
# Ops that would mean a data-dependent shape or control flow (or that TensorRT handles badly).
# Weights above this go to an external data file (model.onnx.data; protobuf's own limit is 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30
FORBIDDEN_OPS = ("NonZero", "Loop", "If", "Scan", "Scatter", "ScatterND", "ScatterElements", "Unique", "Compress")


def check_opset(opset: int) -> None:
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise StaError(f"--opset must be between {MIN_OPSET} and {newest} (this onnx package), got {opset}")


def _sort_stable(self, stable=None, dim: int = -1, descending: bool = False):
    """aten::sort.stable -> TopK over the whole axis. ONNX TopK breaks ties by the lower index,
    which is what a stable ascending sort does, so ties pick the same tokens as PyTorch. k is a
    constant (the axis is static), as TensorRT requires."""
    from onnxscript import opset18 as op

    n = self.shape[dim]
    k = (
        op.Constant(value_ints=[n])
        if isinstance(n, int)
        else op.Shape(self, start=dim, end=dim + 1 if dim != -1 else None)
    )
    return op.TopK(self, k, axis=dim, largest=descending, sorted=True)


def _gelu(self, approximate: str = "none"):
    """aten::gelu -> 0.5 x (1 + erf(x / sqrt 2)) written as (x * 0.5) * (1 + erf(x / sqrt 2)): the
    order ONNX Runtime's GeluFusion matches, so the five element-wise nodes run as one Gelu kernel
    (BiasGelu with the linear layer's bias add). The exporter's own order, x * (0.5 * (1 + erf)),
    is not matched and leaves five passes over the MLP's widest tensor. Standard ops either way."""
    from onnxscript import opset18 as op

    def const(value: float):
        return op.CastLike(op.Constant(value_float=value), self)

    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
        cube = op.Mul(op.Mul(self, self), self)
        inner = op.Mul(const(math.sqrt(2 / math.pi)), op.Add(self, op.Mul(const(0.044715), cube)))
        return op.Mul(op.Mul(self, const(0.5)), op.Add(op.Tanh(inner), const(1.0)))
    erf = op.Erf(op.Div(self, const(math.sqrt(2))))
    return op.Mul(op.Mul(self, const(0.5)), op.Add(erf, const(1.0)))


class _ExporterProgress(io.StringIO):
    """Captures what the exporter prints; each step it starts ("[torch.onnx] Run decompositions...")
    becomes a progress line, so a long export says where it is."""

    STEP = re.compile(r"^\[torch\.onnx\] (.+?)\.\.\.$")
    NAMES = {  # the exporter's step names, in sta's words
        "Obtain model graph": "tracing the model (torch.export)",
        "Run decompositions": "decomposing into core ATen ops",
        "Translate the graph into ONNX": "translating the graph into ONNX",
        "Optimize the ONNX graph": "optimising the ONNX graph (constant folding)",
    }

    def __init__(self, log: Log):
        super().__init__()
        self.log, self.pending = log, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            m = self.STEP.match(line.strip())
            if m:
                step = m.group(1)
                self.log(next((v for k, v in self.NAMES.items() if step.startswith(k)), f"ONNX exporter: {step}"))
        return super().write(text)


@contextlib.contextmanager
def quiet_exporter(log: Log = quiet):
    """The exporter prints progress on stdout and logs warnings (torchvision ops, version
    converter); stdout must stay clean for --json. Its steps go to `log`; captured output is
    returned on failure."""
    buffer = _ExporterProgress(log)
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    model: nn.Module, path: Path, *, opset: int, batch: int | None, metadata: dict[str, str], log: Log = quiet
) -> None:
    """Write `model` (already in its export dtype, on the CPU) to `path` as ONNX.

    batch None: dynamic batch dimension named "batch"; else fixed. Weights above EXTERNAL_DATA_BYTES
    go to `path`.data (see `save`). Everything the exporter built is freed before this returns.
    """
    wrapper = ExportModule(model).eval()
    x = example_input(model, batch or TRACE_BATCH, next(model.parameters()).dtype)
    warm_up(model, x[:1])  # the cached constants do not depend on the batch; one sample's activations do not add up
    dynamic = None if batch else ({0: torch.export.Dim(BATCH_DIM)},)
    with quiet_exporter(log):
        try:
            program = torch.onnx.export(
                wrapper,
                (x,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=output_names(model),
                opset_version=opset,
                dynamic_shapes=dynamic,
                custom_translation_table={torch.ops.aten.sort.stable: _sort_stable, torch.ops.aten.gelu.default: _gelu},
                optimize=True,
                verbose=True,  # its step lines become progress (_ExporterProgress); stdout is captured
            )
        except Exception as e:  # the exporter raises many types; the root cause says what failed
            raise StaError(f"ONNX export failed: {root_cause(e)}") from e
    program.model.producer_name = "sta"
    program.model.doc_string = (
        "STA-pruned video classifier. Input pixel_values (batch, C, T, H, W); outputs logits and, per "
        "pruning stage, kept_positions_s (original token indices kept). See metadata 'sta' and 'io'."
    )
    program.model.metadata_props.update(metadata)
    strip_debug_metadata(program.model)
    save(program, path, log)
    del program
    release_memory()  # the ONNX IR graph is full of reference cycles: free its weight copies now


# Per node, the exporter records the Python stack and the FX node it came from: debugging aids that
# embed this machine's install paths (the file would differ per install) and make up a fifth of a
# small model's file. The name scopes stay: they map each node to its module.
DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


def strip_debug_metadata(model) -> None:
    """Drop DEBUG_METADATA from every node of an onnx_ir model (subgraphs and functions included)."""
    graphs = [model.graph, *model.functions.values()]
    for node in (n for g in graphs for n in g.all_nodes()):
        for key in DEBUG_METADATA:
            node.metadata_props.pop(key, None)


def weight_bytes(program) -> int:
    return sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None)


def save(program, path: Path, log: Log = quiet) -> None:
    """Weights inline up to EXTERNAL_DATA_BYTES, else in `path`.data: an inline file is built as one
    protobuf in memory, serialised, and parsed whole again by every reader (the checker, shape
    inference, ONNX Runtime), several copies of the weights each time; external data is written
    tensor by tensor and the graph file stays small."""
    external = weight_bytes(program) > EXTERNAL_DATA_BYTES
    log(f"saving {path.name}" + (f" (weights in {path.name}.data)" if external else ""))
    program.save(str(path), external_data=external)


def metadata_props(model: nn.Module, settings: dict, io: dict) -> dict[str, str]:
    """What a deployment needs, as JSON strings in the model's metadata_props."""
    return {
        "labels": json.dumps(list(model.labels)),
        "preprocessing": json.dumps(dict(model.preprocessing)),
        "sta": json.dumps(settings),
        "io": json.dumps(io),
        "architecture": json.dumps({"family": model.family, **model.cfg.to_dict()}),
    }


@dataclass
class GraphReport:
    """What the ONNX graph holds, and whether its shapes keep STA's contract (see `graph_report`)."""

    opset: int
    nodes: int
    ops: dict[str, int]  # op type -> nodes, sorted by op type
    topk: int
    forbidden: list[str]  # FORBIDDEN_OPS the graph uses
    not_static: list[str]  # tensors without a numeric shape once the batch is fixed
    token_counts: list[int]  # of the (batch, tokens, width) activations, largest first
    outputs: dict[str, list[int | str]]  # output name -> dims (a dim's number, or its symbol)


def graph_report(path: Path, model: nn.Module, batch: int | None) -> GraphReport:
    """Op types, forbidden ops, and whether ONNX shape inference finds every token count static.

    Static is checked on a copy with the batch fixed to 2: ONNX shape inference (with data
    propagation, which follows Shape -> Concat -> Reshape) must then give every intermediate tensor
    a numeric shape. So nothing but the batch is dynamic, and every token count is a constant.
    """
    import onnx

    onnx.checker.check_model(str(path))  # path form: works above 2 GB too
    proto = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    outputs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    nodes = len(proto.graph.node)
    # The batch fixed in place (not on a copy: with inline weights a copy is the whole file again).
    del proto.graph.value_info[:]
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.HasField("dim_value"):
        dim.dim_value = 2
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    del proto
    not_static, token_counts = [], set()
    cfg = model.cfg  # Video Swin's stages have widths embed_dim * 2**i
    widths = {cfg.stage_dim(i) for i in range(len(cfg.depths))} if hasattr(cfg, "stage_dim") else {cfg.embed_dim}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = v.type.tensor_type
        dims = t.shape.dim if t.HasField("shape") else None
        if dims is None or not all(d.HasField("dim_value") for d in dims):
            not_static.append(v.name)
        elif len(dims) == 3 and dims[2].dim_value in widths:
            token_counts.add(dims[1].dim_value)  # (batch, tokens, width) activations
    return GraphReport(
        opset=opset,
        nodes=nodes,
        ops=dict(sorted(ops.items())),
        topk=ops.get("TopK", 0),
        forbidden=sorted(op for op in ops if op in FORBIDDEN_OPS),
        not_static=not_static,
        token_counts=sorted(token_counts, reverse=True),
        outputs=outputs,
    )


def run_session(session, x: torch.Tensor) -> list[torch.Tensor]:
    outs = session.run(None, {INPUT_NAME: x.detach().cpu().numpy()})
    return [torch.from_numpy(o) for o in outs]


def declared_outputs(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
