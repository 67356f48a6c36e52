"""What a model is beyond its weights and architecture: the ModelCard.

The builder (`models.build_from_source`) attaches one card to every model it builds, in one place;
everything downstream (tasks, artifacts, exports) reads `model.card`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCard:
    """family: the backbone ("videomae" | "videoswin"). source_name: what outputs are named after
    (alias, Hub repo or folder name). labels: class names, index order. preprocessing: how clips
    are sampled and normalised (frames, stride, short side, crop, mean/std; see
    `models.build._preprocessing`). provenance: where each value no config gave came from."""

    family: str
    source_name: str
    labels: list[str]
    preprocessing: dict
    provenance: dict | None = None
