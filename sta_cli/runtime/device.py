"""The one device rule of every command (`--device`): auto | cpu | cuda | cuda:N."""

from __future__ import annotations

import os
import re

import torch

from ..errors import StaError

AUTO = "auto"
DEVICE_HELP = (
    "auto | cpu | cuda | cuda:N (auto: CUDA when PyTorch sees a GPU, under torchrun cuda:LOCAL_RANK; else the CPU)"
)
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(spec: str | None) -> str:
    """`spec` checked for its spelling only (nothing is probed yet); None means auto."""
    spec = AUTO if spec is None else str(spec).strip().lower()
    if not _SPEC.match(spec):
        raise StaError(f"unknown device {spec!r} (choose auto, cpu, cuda or cuda:N)")
    return spec


def torch_device(spec: str | torch.device | None = AUTO) -> torch.device:
    """Where PyTorch runs. auto: cuda:LOCAL_RANK (0 outside torchrun) when a GPU is visible, else the
    CPU. An explicit cuda is a promise: no GPU (or fewer than N + 1) is an error, never a silent CPU run."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = check_device(spec)
    cuda = torch.cuda.is_available()
    if spec == AUTO:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if cuda else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not cuda:
        raise StaError(f"--device {spec}: no CUDA device is available")
    index = int(spec.partition(":")[2] or os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise StaError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(f"cuda:{index}")


def runtime_device(spec: str | None) -> str:
    """The ONNX Runtime side of the same choice (runtime.ort.session): auto, cpu or cuda."""
    spec = check_device(spec)
    return spec if spec in (AUTO, "cpu") else "cuda"
