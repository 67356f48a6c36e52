"""What a model is beyond its weights and architecture: the ModelCard; and what the backbones'
config dataclasses share (ConfigDict).

The builder (`models.build_from_source`) attaches one card to every model it builds, in one place;
everything downstream (tasks, artifacts, exports) reads `model.card`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TypeVar

from ..errors import StaError

_Config = TypeVar("_Config", bound="ConfigDict")


class ConfigDict:
    """to_dict / from_dict of a backbone's frozen config dataclass, as an artifact's config.json holds it."""

    def to_dict(self) -> dict:
        """The fields, JSON-ready (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls: type[_Config], d: dict) -> _Config:
        """From a JSON object; keys that are not fields are ignored, missing ones take their defaults."""
        if not isinstance(d, dict):
            raise StaError(f"model config must be a JSON object, got {type(d).__name__}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


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
