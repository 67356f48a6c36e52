"""Pictures for `sta profile`: which tokens STA keeps (the paper's Fig. 4) and the r1 sweep (Fig. 5).

Both are written by `io.outputs` (atomically; an existing file is replaced only if sta drew it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from ..io import outputs
from ..io.outputs import PICTURE_SOFTWARE, drawn_by_sta
from ..io.video import denormalise

if TYPE_CHECKING:
    from .profile import SweepRow


def check_target(path: Path) -> None:
    """Fail early, before any heavy work, if a picture cannot be written to `path`."""
    outputs.check_file_target(Path(path), drawn_by_sta)


def write_png(path: Path, save: Callable[[Path], None]) -> Path:
    return outputs.replace_file(Path(path), save, drawn_by_sta)


def kept_mask(kept: np.ndarray, grid: tuple[int, int, int], frames: int, size: tuple[int, int]) -> np.ndarray:
    """Pixel mask (frames, H, W) of the kept tokens.

    `kept` holds token indices into a time-major grid (t, h, w): index = t*h*w + y*w + x. A token
    covers frames // t consecutive frames and an (H/h) x (W/w) patch.
    """
    t, h, w = grid
    grid_mask = np.zeros(t * h * w, bool)
    grid_mask[np.asarray(kept, dtype=np.int64)] = True
    grid_mask = grid_mask.reshape(t, h, w)
    H, W = size
    slice_of_frame = np.arange(frames) * t // frames
    rows = np.minimum(np.arange(H) * h // H, h - 1)
    cols = np.minimum(np.arange(W) * w // W, w - 1)
    return grid_mask[slice_of_frame][:, rows][:, :, cols]


def kept_tokens_image(
    frames: np.ndarray,
    kept: list[np.ndarray],
    grids: list[tuple[int, int, int]],
    labels: list[str],
    cell: int = 96,
):
    """The sampled frames (T, H, W, 3) uint8 in a grid: first row as input, then one row per STA
    stage with the tokens it dropped whitened. `labels` has one entry per row. -> PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    T, H, W, _ = frames.shape
    scale = cell / max(H, W)
    fw, fh = max(1, round(W * scale)), max(1, round(H * scale))
    rows = [frames] + [
        np.where(kept_mask(k, g, T, (H, W))[..., None], frames, 255).astype(np.uint8) for k, g in zip(kept, grids)
    ]
    font = ImageFont.load_default(size=12)
    label_w = 12 + max(int(font.getlength(s)) for s in labels)
    gap = 2
    canvas = Image.new("RGB", (label_w + T * (fw + gap), len(rows) * (fh + gap) + gap), (235, 235, 235))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = gap + r * (fh + gap)
        draw.text((6, y + fh // 2), labels[r], fill=(0, 0, 0), font=font, anchor="lm")
        for f in range(T):
            tile = Image.fromarray(row[f]).resize(
                (fw, fh), Image.Resampling.NEAREST if fw >= W else Image.Resampling.BILINEAR
            )
            canvas.paste(tile, (label_w + f * (fw + gap), y))
    return canvas


def save_kept_tokens(path: Path, frames, kept, grids, labels) -> Path:
    image = kept_tokens_image(frames, kept, grids, labels)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", PICTURE_SOFTWARE)
    return write_png(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def save_sweep_plot(path: Path, rows: list[SweepRow], title: str) -> Path:
    """Agreement with the unpruned model (top-1, logit cosine) and throughput against r1, STA vs
    random pruning (the paper's Fig. 5 on one clip). `rows` as `tasks.profile.sweep` returns them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r1 = [r.r1 for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax1.plot(r1, [r.sta.top1_agreement for r in rows], "o-", color="C0", label="STA top-1 agreement")
    ax1.plot(r1, [r.random.top1_agreement for r in rows], "s--", color="C1", label="random top-1 agreement")
    ax1.plot(r1, [r.sta.logit_cosine for r in rows], "o:", color="C0", alpha=0.6, label="STA logit cosine")
    ax1.plot(r1, [r.random.logit_cosine for r in rows], "s:", color="C1", alpha=0.6, label="random logit cosine")
    ax1.set(xlabel="r1 (tokens dropped per frame at stage 1)", ylabel="agreement with unpruned", ylim=(-0.05, 1.05))
    ax1.legend(fontsize=8, loc="lower left")
    ax1.grid(alpha=0.3)
    ax2.plot(r1, [r.throughput for r in rows], "o-", color="C2")
    ax2.set(xlabel="r1", ylabel="throughput (clips/s, torch eager)")
    ax2.grid(alpha=0.3)
    for a, r in zip(r1, rows):
        ax2.annotate(
            f"{r.gflops:.3g} GF",
            (a, r.throughput),
            fontsize=7,
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
        )
    fig.suptitle(title, fontsize=10)
    try:
        return write_png(
            path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata={"Software": PICTURE_SOFTWARE})
        )
    finally:
        plt.close(fig)


@torch.inference_mode()
def draw_kept_tokens(model: nn.Module, view: torch.Tensor, pre: dict, path: Path) -> Path:
    """Fig. 4: one view's frames (1, C, T, H, W), one row per STA stage with its dropped tokens whitened."""
    _, kept = model.forward_with_positions(view)
    grids = model.kept_grids
    frames = denormalise(view[0], pre)
    labels = [f"input: {view.shape[2]} frames"]
    labels += [f"STA step {i + 1}: {k.shape[1]}/{math.prod(g)} kept" for i, (k, g) in enumerate(zip(kept, grids))]
    return save_kept_tokens(path, frames, [k[0].cpu().numpy() for k in kept], grids, labels)
