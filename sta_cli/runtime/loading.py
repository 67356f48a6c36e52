"""Turning a model spec into a model ready for a task: the STA settings, the one default-r1 rule,
the validation clip, the default output folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from ..io.checkpoints import Source
from ..io.video import load_clip, synthetic_clip
from ..models import build_from_source
from ..pruning import STAConfig


def sta_config(base: STAConfig | None = None, r1: int | None = None, **options) -> STAConfig:
    """`base` (default: no pruning) with r1 and any STA options given (None means unchanged)."""
    changes = {k: v for k, v in {"r1": r1, **options}.items() if v is not None}
    return dataclasses.replace(base or STAConfig(), **changes)


def from_source(source: Source, r1: int | None = None, **sta_options) -> nn.Module:
    base = STAConfig.from_dict(source.sta) if source.is_artifact else None
    return build_from_source(source, sta_config(base, r1, **sta_options))


def paper_r1(model: nn.Module) -> int:
    """The paper's headline setting scaled to the model: 64 of ViT-B's 196 tokens per frame, as a share
    of the tokens per temporal slice where pruning starts (Video Swin: 256 of 28x28; the demo: 21 of 64)."""
    _, h, w = model.pruning_grid
    return max(1, round(64 * h * w / 196))


def task_sta(base: STAConfig | None, model: nn.Module, r1: int | None, **options) -> STAConfig:
    """The one default-r1 rule of every command: r1 if given, else an artifact's own setting, else
    the paper's setting scaled to the model (`paper_r1`)."""
    if r1 is None and base is None:
        r1 = paper_r1(model)
    return sta_config(base, r1, **options)


def sample_clip(model: nn.Module, clip: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """The validation clip: decoded from `clip`, else the demo model's own sample, else the deterministic
    synthetic one (whose plain moving square a model trained on other data need not recognise)."""
    if clip is None and getattr(model, "source_name", None) == "demo":
        from ..demo import sample_path

        clip = sample_path()
    if clip is not None:
        return load_clip(Path(clip), model.preprocessing), str(clip)
    return synthetic_clip(model.preprocessing), "synthetic"


def default_output(source_name: str, r1: int) -> Path:
    return Path(f"{source_name}-sta-r{r1}")
