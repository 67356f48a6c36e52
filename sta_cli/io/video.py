"""Clips for the model: decoded from a video file with PyAV, or a deterministic synthetic one.

A clip tensor is (views, C, T, H, W) float, normalised with the model's mean/std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StaError


def normalise(frames: torch.Tensor, pre: dict) -> torch.Tensor:
    """(T, H, W, C) uint8 -> (C, T, crop, crop) float: short-side resize, centre crop, mean/std."""
    x = frames.permute(3, 0, 1, 2).float()  # (C, T, H, W)
    h, w = x.shape[-2:]
    short = pre["short_side"]
    size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    crop = pre["crop_size"]
    top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    x = x[..., top : top + crop, left : left + crop] / 255.0 * pre.get("value_range", 1.0)
    mean = torch.tensor(pre["mean"]).view(-1, 1, 1, 1)
    std = torch.tensor(pre["std"]).view(-1, 1, 1, 1)
    return (x - mean) / std


def synthetic_frames(num_frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """A textured static background with a bright square moving across it. -> (T, size, size, 3) uint8.

    Deterministic, and shaped like real footage for STA's purposes: most tokens repeat over time,
    a few carry the motion.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    background = np.stack([np.sin(6.3 * (xx + yy)), np.cos(9.4 * xx * yy), np.sin(4.1 * yy)], -1)
    background = (0.5 + 0.25 * background + 0.1 * rng.standard_normal((size, size, 3))).clip(0, 1)
    frames = np.repeat(background[None], num_frames, 0)
    side = size // 5
    for t in range(num_frames):
        x0 = int((size - side) * t / max(1, num_frames - 1))
        y0 = size // 3
        frames[t, y0 : y0 + side, x0 : x0 + side] = (0.95, 0.2, 0.1)
    return torch.from_numpy((frames * 255).astype(np.uint8))


def synthetic_clip(pre: dict, seed: int = 0) -> torch.Tensor:
    """(1, C, T, H, W) normalised synthetic clip matching the model's preprocessing."""
    return normalise(synthetic_frames(pre["num_frames"], pre["crop_size"], seed), pre)[None]


def read_frames(path: Path, indices_for) -> torch.Tensor:
    """Decode the frames `indices_for(frame_count)` picks from a video. -> (T, H, W, 3) uint8."""
    import av

    path = Path(path)
    if path.is_dir():
        raise StaError(f"{path} is a directory, not a video")
    if not path.is_file():
        raise StaError(f"no such video file: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise StaError(f"{path} has no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except StaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise StaError(f"cannot decode {path}: {e}") from None
    if not frames:
        raise StaError(f"{path} has no decodable frames")
    idx = indices_for(len(frames))
    return torch.from_numpy(np.stack([frames[i] for i in idx]))


def centre_indices(count: int, num_frames: int, stride: int) -> list[int]:
    """num_frames indices at `stride` around the middle of the video; short videos repeat their last frame."""
    span = num_frames * stride
    start = max(0, (count - span) // 2)
    return [min(start + i * stride, count - 1) for i in range(num_frames)]


def load_clip(path: Path, pre: dict) -> torch.Tensor:
    """One centred clip of a video file, preprocessed: (1, C, T, H, W)."""
    frames = read_frames(path, lambda n: centre_indices(n, pre["num_frames"], pre["frame_stride"]))
    return normalise(frames, pre)[None]
