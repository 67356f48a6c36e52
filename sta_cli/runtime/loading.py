"""Turning a model spec into a model ready for a task: `load`, the STA settings, the one default-r1
rule, the validation clip, the default output folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import StaError
from ..io.checkpoints import Source, resolve
from ..io.video import VIDEO_SUFFIXES, load_clip, synthetic_clip
from ..models import build_from_source
from ..models.overrides import ArchOverrides
from ..models.registry import ALIASES
from ..pruning import STAConfig
from .device import torch_device


def load(
    spec: str | Path,
    r1: int | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | torch.device = "cpu",
    num_heads: int | None = None,
    image_size: int | None = None,
    num_frames: int | None = None,
    mean: tuple[float, float, float] | str | None = None,
    std: tuple[float, float, float] | str | None = None,
    compile: bool | str = False,
    **sta_options,
) -> nn.Module:
    """Load a model in eval mode: an alias, Hub repo id, local folder or weights file, or an artifact.

    r1 = None keeps an artifact's pruning settings (and means no pruning for a plain checkpoint);
    r1 = 0 is always the unpruned model. num_heads, image_size, num_frames, mean and std set what
    the weights cannot tell (and override a config). Other keyword arguments are STAConfig fields.
    compile: True runs the model through torch.compile(fullgraph=True) (sta_cli.compiled; the first
    call per STA setting compiles), a string also picks torch.compile's mode.
    """
    arch = ArchOverrides.parse(num_heads, image_size, num_frames, mean, std)
    source = resolve(str(spec), revision=revision, token=token, arch=arch)
    model = from_source(source, r1, **sta_options).to(torch_device(device))
    if compile:
        from ..compiled import compile_model

        model = compile_model(model, mode=compile if isinstance(compile, str) else None)
    return model


def sta_config(base: STAConfig | None = None, r1: int | None = None, **options) -> STAConfig:
    """`base` (default: no pruning) with r1 and any STA options given (None means unchanged)."""
    unknown = sorted(set(options) - set(STAConfig.__dataclass_fields__))
    if unknown:  # library calls pass STA options as keywords: name the bad one, as the CLI would
        raise StaError(f"unknown STA option {unknown[0]!r} (STA options: {', '.join(STAConfig.__dataclass_fields__)})")
    changes = {k: v for k, v in {"r1": r1, **options}.items() if v is not None}
    cfg = dataclasses.replace(base or STAConfig(), **changes)
    if options.get("seed") is not None and cfg.first_group not in ("random", "grid") and cfg.score != "random":
        raise StaError("--seed has no effect here: it seeds --first-group random | grid and --score random")
    return cfg


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
    if clip is None and demo_model() is not None:
        from ..demo import is_demo_model, sample_path

        clip = sample_path() if is_demo_model(model) else None
    if clip is not None:
        return load_clip(Path(clip), model.preprocessing), str(clip)
    return synthetic_clip(model.preprocessing), "synthetic"


def default_output(source_name: str, r1: int) -> Path:
    return Path(f"{source_name}-sta-r{r1}")


def default_model(spec: str | Path | None, demo: bool, say: Callable[[str], None]) -> str | None:
    """The model a command runs on: `spec`, else the artifact `sta prune` left in the current folder
    (the newest), else, for commands that can run on it (profile, eval), the packaged demo model.
    `say` is told which was picked. The one rule, for the CLI and the library alike."""
    from ..io.artifact import find_artifacts

    if spec is not None:
        return str(spec)
    found = find_artifacts(Path("."))
    if found:
        others = f" (newest of {len(found)})" if len(found) > 1 else ""
        say(f"using the artifact in ./{found[0].name}{others}")
        return str(found[0])
    name = demo_model() if demo else None
    if name is not None:
        say("no model given and no artifact here: using the packaged demo model")
    return name


def demo_model() -> str | None:
    """The packaged demo model's alias, if this install has it."""
    alias = ALIASES.get("demo")
    return alias.name if alias is not None and alias.packaged and alias.path.is_dir() else None


def demo_clip() -> Path | None:
    """The sample clip shipped next to the demo model, if any."""
    if demo_model() is None:
        return None
    videos = sorted(p for p in ALIASES["demo"].path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    return videos[0] if videos else None
