"""Backbones, and turning a resolved checkpoint (io.checkpoints.Source) into a ready model.

Each backbone module provides a config dataclass, the nn.Module, a `checkpoint_filter_fn` that maps
foreign key layouts into ours, and `config_from_state_dict` for weights that come without a config.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import StaError
from ..pruning import STAConfig
from . import videomae, videoswin
from .registry import ALIASES, Alias

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _names(keys, limit=6) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict that names unknown, missing and mis-shaped keys in one StaError."""
    expected = model.state_dict()
    unknown = set(sd) - set(expected)
    missing = set(expected) - set(sd)
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    problems = []
    if unknown:
        problems.append(f"unknown keys {_names(unknown)}")
    if missing:
        problems.append(f"missing keys {_names(missing)}")
    if shapes:
        problems.append(f"mismatched shapes {_names(shapes, 3)}")
    if problems:
        raise StaError(f"{what} does not fit the model: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()})


def default_preprocessing(num_frames: int, image_size: int, frame_stride: int, pre: dict | None = None) -> dict:
    """How clips are sampled and normalised for this model (paper Sec. 4.1; docs/algorithm.md §Evaluation sampling)."""
    pre = pre or {}
    crop = pre.get("crop_size", image_size)
    crop = crop.get("height", image_size) if isinstance(crop, dict) else crop
    return {
        "num_frames": num_frames,
        "frame_stride": frame_stride,
        "short_side": image_size,
        "crop_size": crop,
        "mean": list(pre.get("image_mean", IMAGENET_MEAN)),
        "std": list(pre.get("image_std", IMAGENET_STD)),
        "value_range": 1.0,  # mean/std apply to pixels scaled to [0, 1]
    }


def _labels(config: dict | None, num_classes: int) -> list[str]:
    if config and isinstance(config.get("labels"), list):
        return list(config["labels"])
    id2label = (config or {}).get("id2label") or {}
    if len(id2label) == num_classes:
        return [str(id2label.get(str(i), id2label.get(i, f"class_{i}"))) for i in range(num_classes)]
    return [f"class_{i}" for i in range(num_classes)]


def family_of(config: dict, alias: Alias | None, sd: dict[str, torch.Tensor]) -> str:
    """Which backbone a checkpoint is for: from sta's config, the alias, transformers' model_type, or its keys."""
    if "architecture" in config:
        return config["architecture"]
    if alias is not None:
        return alias.family
    if config.get("model_type") == "videomae":
        return "videomae"
    for family, looks_like in KEY_SIGNATURES.items():
        if any(looks_like(k) for k in sd):
            return family
    return "videomae"


def build_videomae(source, sd: dict[str, torch.Tensor], sta: STAConfig) -> nn.Module:
    config = source.config or {}
    sd = videomae.checkpoint_filter_fn(sd)
    what = f"{source.spec} ({', '.join(p.name for p in source.weights)})"
    if "architecture" in config:  # sta's own spelling
        cfg = videomae.VideoMAEConfig.from_dict(config["model"])
    elif config.get("model_type") == "videomae" or "hidden_size" in config:  # transformers' spelling
        cfg = videomae.VideoMAEConfig.from_hf(config)
    else:
        cfg = videomae.config_from_state_dict(sd)
    if "head.weight" not in sd and "blocks.0.norm1.weight" in sd:
        raise StaError(f"{what} has no classification head: a pre-training checkpoint? use a fine-tuned one")
    model = videomae.VideoMAE(cfg)
    load_strict(model, sd, what)
    model.set_sta(sta)
    stride = source.alias.frame_stride if source.alias else (2 if cfg.num_classes == 174 else 4)
    model.labels = _labels(config, cfg.num_classes)
    model.preprocessing = config.get("preprocessing") or default_preprocessing(
        cfg.num_frames, cfg.image_size, stride, source.preprocessor
    )
    return model


def build_videoswin(source, sd: dict[str, torch.Tensor], sta: STAConfig) -> nn.Module:
    config = source.config or {}
    what = f"{source.spec} ({', '.join(p.name for p in source.weights)})"
    volume = videoswin.window_hint(sd)
    sd = videoswin.checkpoint_filter_fn(sd)
    if "architecture" in config:  # sta's own spelling
        cfg = videoswin.VideoSwinConfig.from_dict(config["model"])
    else:
        cfg = videoswin.config_from_state_dict(sd, volume)
    model = videoswin.VideoSwin(cfg)
    load_strict(model, sd, what)
    model.set_sta(sta)
    stride = source.alias.frame_stride if source.alias else 2  # the release's K400 protocol: 32 frames, stride 2
    labels = config.get("labels") or (videoswin.kinetics400_labels() if cfg.num_classes == 400 else None)
    model.labels = _labels({"labels": labels} if labels else config, cfg.num_classes)
    model.preprocessing = config.get("preprocessing") or default_preprocessing(cfg.num_frames, cfg.image_size, stride)
    return model


# family -> builder(source, raw state dict, sta) and a test on state-dict keys for files without a
# config. Order matters: Video Swin keys also start with patch_embed.proj.
BUILDERS = {"videomae": build_videomae, "videoswin": build_videoswin}
KEY_SIGNATURES = {
    "videoswin": lambda k: k.startswith(("features.", "backbone.layers.", "layers.")),
    "videomae": lambda k: k.startswith(("videomae.", "blocks.", "patch_embed.proj")),
}


def build_from_source(source, sta: STAConfig | None = None) -> nn.Module:
    """A Source (see io.checkpoints.resolve) -> eval-mode model with weights, labels and preprocessing."""
    from ..io.checkpoints import read_state_dict

    sd = read_state_dict(source.weights)
    family = family_of(source.config or {}, source.alias, sd)
    if family not in BUILDERS:
        raise StaError(f"{source.spec}: unsupported architecture {family!r} (supported: {', '.join(BUILDERS)})")
    model = BUILDERS[family](source, sd, sta or STAConfig())
    model.family = family
    model.source_name = source.name
    return model.eval()


__all__ = ["ALIASES", "Alias", "BUILDERS", "build_from_source", "load_strict", "videomae", "videoswin"]
