"""STA on Video Swin: the stage plan and the nearest-kept fill, as pure functions (docs/videoswin.md).

Video Swin keeps a full spatio-temporal grid per stage (window attention needs it), so STA prunes
at the input of stages 2, 3 and 4 (right after each PatchMerging), every temporal slice being one
group, with `{r1, 1.5 r1/4, 2 r1/16}` tokens dropped per slice (paper Sec. 4.1), each count taken
against that stage's full grid. Inside a pruned stage the linear layers see only kept tokens;
window attention runs on the full grid with every dropped position filled by the nearest kept
token of its slice (`nearest_kept_fill`). Token selection itself is `sta.stage_keep_indices`.
"""

from __future__ import annotations

import math

import torch

from ..errors import StaError
from .config import STAConfig, Stage

# Tokens dropped per temporal slice at stages 2, 3, 4 as multiples of r1: {r1, 1.5 r1/4, 2 r1/16}.
SWIN_SCHEDULE = (1.0, 1.5 / 4, 2.0 / 16)


def swin_drops(r1: int) -> tuple[int, ...]:
    """Per-slice drop counts at stages 2, 3, 4; fractional counts round half up (r1=100: 100, 38, 13)."""
    return tuple(int(math.floor(r1 * m + 0.5)) for m in SWIN_SCHEDULE)


def max_swin_r1(slice_sizes: list[int]) -> int:
    """Largest r1 that leaves at least one token per slice at every pruned stage."""
    r1 = slice_sizes[0] - 1
    while r1 > 0 and any(d >= n for d, n in zip(swin_drops(r1), slice_sizes)):
        r1 -= 1
    return r1


def plan_swin_stages(cfg: STAConfig, grids: list[tuple[int, int, int]]) -> list[Stage]:
    """The three pruning steps for the stage grids (T, H, W) of stages 2, 3, 4.

    `Stage.block` is the Swin stage (0-based: 1, 2, 3) at whose input the step prunes.
    Raises StaError when r1 or the settings do not fit.
    """
    if not cfg.enabled:
        return []
    if len(grids) != 3:
        raise StaError(f"STA on Video Swin needs 4 stages, this model has {len(grids) + 1}")
    if cfg.schedule != "decreasing":
        raise StaError(
            f"Video Swin supports only the paper's schedule {{r1, 1.5 r1/4, 2 r1/16}} (--schedule decreasing), "
            f"got {cfg.schedule!r}"
        )
    sizes = [h * w for _, h, w in grids]
    top = max_swin_r1(sizes)
    if cfg.r1 > top:
        raise StaError(
            f"r1 must be between 0 and {top} for this model (per-slice grids of {', '.join(map(str, sizes))} tokens "
            f"at stages 2-4; r1={cfg.r1} would drop {', '.join(map(str, swin_drops(cfg.r1)))})"
        )
    stages = []
    for s, ((t, h, w), drop) in enumerate(zip(grids, swin_drops(cfg.r1))):
        stages.append(Stage(block=s + 1, groups=t, drop=drop, backward=cfg.order[s] == "b", tokens_in=t * h * w))
    return stages


def nearest_kept_fill(kept: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """For every position of a (T, H, W) grid, the index (into `kept`) of the nearest kept token of its slice.

    kept (B, K): kept grid positions (time-major raster order t*H*W + y*W + x), sorted ascending,
    the same number K // T in every slice. Returns (B, T*H*W) int64, so that `tokens[:, fill]` is the
    filled grid. Distance is squared Euclidean on (y, x); ties go to the kept token first in raster
    order (argmin returns the first minimum). A kept position maps to itself. Static shapes
    throughout: a (B, T, H, W, K/T) distance tensor and an argmin.
    """
    B, K = kept.shape
    T, H, W = grid
    per_slice = K // T
    local = (kept % (H * W)).to(torch.int32).view(B, T, 1, 1, per_slice)  # int32: half the memory of int64
    ky, kx = local.div(W, rounding_mode="floor"), local % W
    # Separable: the row and column terms on (H, K/T) and (W, K/T), then one add over the full table
    # (instead of two differences, two squares and an add each the table's size). Exact integers.
    dy = (torch.arange(H, device=kept.device, dtype=torch.int32).view(1, 1, H, 1, 1) - ky) ** 2  # (B, T, H, 1, K/T)
    dx = (torch.arange(W, device=kept.device, dtype=torch.int32).view(1, 1, 1, W, 1) - kx) ** 2  # (B, T, 1, W, K/T)
    nearest = (dy + dx).argmin(-1).flatten(2)  # (B, T, H*W)
    offsets = torch.arange(T, device=kept.device).view(1, T, 1) * per_slice
    return (nearest + offsets).flatten(1)
