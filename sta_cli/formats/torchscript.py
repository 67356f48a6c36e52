"""TorchScript (`torch.jit.trace`) and torch.export (`.pt2`) programs: PyTorch-only deployments.

Both load without sta installed: `torch.jit.load("model.pt")` (also from C++ LibTorch) and
`torch.export.load("model.pt2").module()`. config.json travels inside both files as an extra
file, so the labels and preprocessing are there too.

TorchScript is deprecated upstream in favour of torch.export, but it is still what LibTorch C++
loads, so we keep it. Tracing is enough here: STA's control flow depends only on the model's
shape plan (never on data), and the batch size is read with traced shape ops, so one trace
serves every batch size (traced at batch 3, validated at 1 and 2).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import StaError
from .graph import BATCH_DIM, TRACE_BATCH, ExportModule, example_input, root_cause, warm_up


def export_torchscript(model: nn.Module, path: Path, *, batch: int | None, config: dict) -> dict:
    """Trace `model` (in its export dtype and device) into `path`. Returns {"tracer_warnings": [...]}."""
    param = next(model.parameters())
    x = example_input(model, batch or TRACE_BATCH, param.dtype, param.device)
    warm_up(model, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # "torch.jit.trace is deprecated": known and intended (see the module docstring).
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=DeprecationWarning)
        try:
            traced = torch.jit.trace(ExportModule(model).eval(), (x,), check_trace=False)
        except Exception as e:
            raise StaError(f"TorchScript trace failed: {root_cause(e)}") from e
    tracer = sorted({str(w.message).splitlines()[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)})
    torch.jit.save(traced, str(path), _extra_files={"config.json": json.dumps(config)})
    return {"tracer_warnings": tracer}


def export_pt2(model: nn.Module, path: Path, *, batch: int | None, config: dict) -> dict:
    """torch.export the model into a `.pt2` archive (dynamic batch unless `batch`)."""
    param = next(model.parameters())
    x = example_input(model, batch or TRACE_BATCH, param.dtype, param.device)
    warm_up(model, x)
    dynamic = None if batch else ({0: torch.export.Dim(BATCH_DIM)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(ExportModule(model).eval(), (x,), dynamic_shapes=dynamic)
        except Exception as e:
            raise StaError(f"torch.export failed: {root_cause(e)}") from e
        torch.export.save(program, str(path), extra_files={"config.json": json.dumps(config)})
    return {}


def load_torchscript(path: Path, device: str | torch.device = "cpu"):
    return torch.jit.load(str(path), map_location=device).eval()


def load_pt2(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(str(path)).module()
