"""FLOPs the way the paper reports them: fvcore's convention, one multiply-add = one FLOP.

Counted by running the model's own forward (pruning included) on the meta device under
torch's FlopCounterMode, so no weights are allocated and big models cost nothing to count.
FlopCounterMode counts a multiply-add as 2, hence the halving. Like fvcore, it counts matmuls,
convolutions and attention; normalisation and element-wise ops (<1% here) are not counted.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

FLOPS_LABEL = "GFLOPs (fvcore convention: 1 multiply-add = 1 FLOP)"


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on an input of `input_shape` (batch included), model on any device."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: count the model it wraps
    with torch.device("meta"):  # a twin without weights: same code path, nothing allocated
        meta = type(model)(model.cfg, model.sta)
    x = torch.empty(input_shape, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(x)
    return counter.get_total_flops() // 2


def input_shape_of(model: nn.Module, batch: int = 1) -> tuple[int, ...]:
    cfg = model.cfg
    return (batch, cfg.in_chans, cfg.num_frames, cfg.image_size, cfg.image_size)


def gflops(model: nn.Module) -> float:
    """GFLOPs (fvcore convention) of one clip."""
    return count_flops(model, input_shape_of(model)) / 1e9
