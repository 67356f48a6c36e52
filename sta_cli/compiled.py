"""Compiled PyTorch: a model run through `torch.compile(fullgraph=True)`.

STA keeps every shape static (top-k with a constant k, gathers, matmuls), so the whole forward,
token scoring included, compiles to one graph per STA setting with no graph break. The compiled
module still answers `set_sta`, `kept_positions`, `cfg`, ... (they reach the wrapped model);
changing the STA setting compiles a graph for it once, later switches reuse it.

Not compilable: the ablations that draw a seeded random order (first_group random or grid, score
random). torch.compile cannot trace a seeded `torch.Generator`; they raise a StaError here.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from .errors import StaError
from .flops import input_shape_of
from .pruning import STAConfig


def check_compilable(sta: STAConfig) -> None:
    """StaError when `sta` needs a seeded random draw, which torch.compile cannot trace."""
    if sta.first_group in ("random", "grid") or sta.score == "random":
        what = f"first_group={sta.first_group}" if sta.first_group != "tome" else f"score={sta.score}"
        raise StaError(
            f"--compile: {what} draws a seeded random order, which torch.compile cannot trace; "
            "run this setting without --compile"
        )


def default_mode(device: torch.device) -> str | None:
    """torch.compile's mode: on CUDA, "reduce-overhead" (CUDA graphs: every shape is static, so one
    recorded graph per STA setting replays); on the CPU the default."""
    return "reduce-overhead" if device.type == "cuda" else None


def compile_model(model: nn.Module, mode: str | None = None) -> nn.Module:
    """`model` compiled with torch.compile(fullgraph=True); `mode` None picks `default_mode`.

    Compilation happens on the first call for each STA setting (see `warm_up`)."""
    check_compilable(model.sta)
    param = next(model.parameters())
    if mode is None:
        mode = default_mode(param.device)
    with torch.inference_mode():  # fills the index tables the forward memoises (Video Swin's window layouts)
        model(torch.zeros(input_shape_of(model), dtype=param.dtype, device=param.device))
    # dynamic=False: every shape is static by design; without it a second model or input shape
    # compiled in the same process (same forward code) is retraced with symbolic sizes.
    return torch.compile(model, fullgraph=True, dynamic=False, mode=mode)


@torch.inference_mode()
def warm_up(model: nn.Module, x: torch.Tensor, configs: dict[str, STAConfig]) -> dict[str, float]:
    """Compile `model` (a compile_model result) for each setting by calling it once on `x`.
    Returns the seconds each first call took (compilation included), per setting name."""
    seconds = {}
    for name, cfg in configs.items():
        check_compilable(cfg)
        model.set_sta(cfg)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds[name] = time.perf_counter() - t0
    return seconds
