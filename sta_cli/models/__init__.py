"""Backbones (videomae.py, videoswin.py) and building a model from a resolved checkpoint (build.py).

`build_from_source` is the one builder: `FAMILIES` (build.py) holds what differs between backbones,
and every model it builds carries its ModelCard (base.py). What the weights cannot tell comes from a
config, explicit options (`ArchOverrides`, overrides.py) or a released architecture's published values.
"""

from __future__ import annotations

from . import videomae, videoswin
from .base import ModelCard
from .build import FAMILIES, Family, build_checked, build_from_source, check_fit, family_of, load_strict
from .overrides import ArchOverrides, Provenance
from .registry import ALIASES, Alias

__all__ = [
    "ALIASES",
    "Alias",
    "ArchOverrides",
    "FAMILIES",
    "Family",
    "ModelCard",
    "Provenance",
    "build_checked",
    "build_from_source",
    "check_fit",
    "family_of",
    "load_strict",
    "videomae",
    "videoswin",
]
