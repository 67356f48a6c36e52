"""The packaged demo: a synthetic action dataset (synthetic.py) and the small VideoMAE trained on it.

The trained model and a sample clip live in `sta_cli/assets/demo/` and load through the normal
path as the alias "demo" (`sta_cli.load("demo")`). scripts/train_demo.py reproduces them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..models.registry import ASSETS
from .synthetic import LABELS, NUM_FRAMES, SIZE, make_dataset, render_clip

DEMO_DIR = ASSETS / "demo"


def is_demo_model(model: torch.nn.Module) -> bool:
    """The packaged demo's architecture and classes, pruned or not, whatever its name (an artifact
    is named after its folder): its sample clip and held-out clips apply to it."""
    config = json.loads((DEMO_DIR / "config.json").read_text())
    if model.card is None or model.card.family != config["architecture"] or list(model.labels) != config["labels"]:
        return False
    return model.cfg == type(model.cfg).from_dict(config["model"])  # fields added since take their defaults


def sample_info() -> dict:
    """What the packaged sample clip is: {"file": path, "label": class name, "class_index", "seed", ...}."""
    info = json.loads((DEMO_DIR / "sample.json").read_text())
    return {**info, "file": DEMO_DIR / info["file"]}


def sample_path() -> Path:
    """The packaged sample video (an H.264 mp4 of one held-out synthetic clip)."""
    return sample_info()["file"]


def clips_to_input(clips: np.ndarray, pre: dict) -> torch.Tensor:
    """Rendered clips (B, T, H, W, 3) uint8 -> model input (B, 3, T, crop, crop), preprocessed exactly
    as a decoded video file is (io.video.normalise)."""
    from ..io.video import normalise

    return torch.stack([normalise(torch.from_numpy(np.ascontiguousarray(c)), pre) for c in clips])


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Top-1 class of each clip in x (B, 3, T, H, W), in chunks of `batch`. -> (B,) int64."""
    return torch.cat([model(x[i : i + batch]).argmax(-1) for i in range(0, len(x), batch)])


__all__ = [
    "DEMO_DIR",
    "LABELS",
    "NUM_FRAMES",
    "SIZE",
    "clips_to_input",
    "make_dataset",
    "predict",
    "render_clip",
    "sample_info",
    "sample_path",
]
