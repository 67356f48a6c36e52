"""Turning a resolved checkpoint (io.checkpoints.Source) into a ready model: one builder for every backbone.

Each backbone module provides a config dataclass, the nn.Module, a `checkpoint_filter_fn` that maps
foreign key layouts into ours, and `shapes_from_state_dict` for what its weights fix. `FAMILIES`
holds what differs between backbones (how their weights and configs are read, how a checkpoint
without a config is recognised, which input fields options may override, how the releases were
evaluated); `_build` does the rest once for all of them. What weights cannot tell (input size,
frames, heads, normalisation) comes from a config, from explicit options (`overrides.ArchOverrides`),
or, for the released architectures only, from their published values; `Provenance` records which;
the model's card carries it (`model.card.provenance`, models/base.py).

Models are first built on the meta device and checked against the weights' shapes, so a config that
does not fit its weights fails before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn

from ..errors import StaError
from ..pruning import STAConfig
from . import videomae, videoswin
from .base import ModelCard
from .overrides import ALIAS, ASSUMED, CONFIG, KNOWN, OPTION, WEIGHTS, ArchOverrides, Provenance
from .registry import DATASET_LABELS, Alias

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Hub repos converted from the original 6-head ViT-S whose config.json says 16 heads (transformers'
# converter kept its default); a model fine-tuned from them with transformers really has 16.
CONVERTED_6_HEAD_SMALL = ("MCG-NJU/videomae-small-finetuned-kinetics", "MCG-NJU/videomae-small-finetuned-ssv2")


def _names(keys, limit=6) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_fit(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], what: str) -> None:
    """Name unknown, missing and mis-shaped keys in one StaError (`expected`: a state dict, meta is fine)."""
    unknown = set(sd) - set(expected)
    missing = set(expected) - set(sd)
    shapes = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    if unknown:
        problems.append(f"unknown keys {_names(unknown)}")
    if missing:
        problems.append(f"missing keys {_names(missing)}")
    if shapes:
        problems.append(f"mismatched shapes {_names(shapes, 3)}")
    if problems:
        raise StaError(f"{what} does not fit the model: " + "; ".join(problems))


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], what: str, assign: bool = False) -> None:
    """load_state_dict that names unknown, missing and mis-shaped keys in one StaError; assign=True
    makes the tensors the model's own (no copy: see `build_checked`)."""
    from ..io.checkpoints import owned

    expected = model.state_dict()
    check_fit(expected, sd, what)
    sd = {k: v.to(expected[k].dtype) for k, v in sd.items()}
    model.load_state_dict({k: owned(v) for k, v in sd.items()} if assign else sd, assign=assign)


def build_checked(make: Callable[[], nn.Module], sd: dict[str, torch.Tensor], what: str) -> nn.Module:
    """make() on the meta device first (no memory), check the weights fit, then build it with its
    parameters on the meta device (no random initialisation) and make the weights its parameters:
    they are held once."""
    from ..io.checkpoints import empty_parameters

    with torch.device("meta"):
        check_fit(make().state_dict(), sd, what)
    with empty_parameters():
        model = make()
    load_strict(model, sd, what, assign=True)
    return model


# --- what differs between families ---------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """A checkpoint's state dict in the family's layout and what the weights fix (`shapes_from_state_dict`).
    position_table: a fixed position table the checkpoint carries (mmaction2's VideoMAE), checked
    against the input and not loaded (ours is recomputed)."""

    state_dict: dict[str, torch.Tensor]
    shapes: dict
    position_table: torch.Tensor | None = None


@dataclass(frozen=True)
class Family:
    """What one backbone family needs from the builder; everything else `_build` does the same way.

    module: the model file (its `checkpoint_filter_fn` maps foreign key layouts into ours).
    config, model: its frozen config dataclass and its PrunedClassifier.
    read_weights(raw, filtered, config, arch, what) -> Weights: what the weights fix, after the
        family's own checks of them (raw: the state dict as read, filtered: in our layout; config:
        for what the weights leave open, e.g. which of several windows a Swin bias table fits).
    read_fields(source, config, shapes, arch, prov, what) -> the config's fields, from sta's or
        transformers' config (checked against the weights) or from the weights and released values.
    check_input(cfg, weights, what): the family's check of the final config against the weights, or None.
    key_prefixes: how the keys of a checkpoint without a config start (see `KEY_TEST_ORDER`).
    inputs: the fields explicit options may override.
    short_side(crop) -> the side clips are resized to before the centre crop, as the releases were evaluated.
    kinetics_stride: the frame stride of the releases' Kinetics protocol.
    protocol: whose evaluation code clips follow, down to its rounding (io.video: "videomae", "mmaction").
    display_name: the family as the provenance notes name it.
    """

    module: ModuleType
    config: type
    model: type
    read_weights: Callable[[dict, dict, dict, ArchOverrides, str], Weights]
    read_fields: Callable[..., dict]
    check_input: Callable[..., None] | None
    key_prefixes: tuple[str, ...]
    inputs: tuple[str, ...]
    short_side: Callable[[int], int]
    kinetics_stride: int
    protocol: str
    display_name: str


@dataclass(frozen=True)
class Built:
    """What `_build` returns; `build_from_source` makes the model's ModelCard from it."""

    model: nn.Module
    labels: list[str]
    preprocessing: dict


def _check_against_weights(
    cfg: dict, shapes: dict, names: dict[str, str], what: str, stated: dict | None = None
) -> None:
    """A config value the weights contradict is one StaError, before anything is built. `stated`: the
    config as written, when `cfg` filled in defaults (the line then says the value was a default)."""
    for key, weight_value in shapes.items():
        if key in names and key in cfg and cfg[key] != weight_value:
            given = stated is None or names[key] in stated or (key == "num_classes" and stated.get("id2label"))
            claim = f"says {names[key]} {cfg[key]!r}" if given else f"gives no {names[key]} (default {cfg[key]!r})"
            raise StaError(f"{what}: the config {claim} but the weights have {weight_value!r}")


def _missing_error(what: str, kind: str, missing: list[str]) -> StaError:
    options = " ".join(f"--{m.replace('_', '-')}" for m in missing)
    return StaError(
        f"{what}: {kind} is not a released architecture, and nothing gives its {', '.join(missing)}: "
        f"put a config.json next to the weights, or pass {options} (keywords of sta_cli.load / sta_cli.prune)"
    )


def _repo_ids(source) -> set[str]:
    """Hub repo ids this checkpoint is known by: the Hub source, the alias, or a Hugging Face cache path."""
    ids = set()
    if source.hub:
        ids.add(source.hub.get("repo_id"))
    if source.alias is not None:
        ids.add(source.alias.source)
    for path in [Path(source.spec).expanduser(), *source.weights]:
        for part in Path(path).absolute().parts:
            if part.startswith("models--"):
                ids.add(part[len("models--") :].replace("--", "/"))
    return ids


# --- VideoMAE ----------------------------------------------------------------------------------------

_VIDEOMAE_INPUT = ("num_heads", "image_size", "num_frames")
_VIDEOMAE_SHAPE_NAMES = {
    k: k for k in ("embed_dim", "depth", "mlp_dim", "num_classes", "patch_size", "tubelet_size", "in_chans")
}
_HF_NAMES = {
    "embed_dim": "hidden_size",
    "depth": "num_hidden_layers",
    "mlp_dim": "intermediate_size",
    "num_classes": "num_labels",
    "patch_size": "patch_size",
    "tubelet_size": "tubelet_size",
    "in_chans": "num_channels",
}


def _videomae_weights(raw: dict, sd: dict, config: dict, arch: ArchOverrides, what: str) -> Weights:
    if "head.weight" not in sd and "blocks.0.norm1.weight" in sd:
        raise StaError(f"{what} has no classification head: a pre-training checkpoint? use a fine-tuned one")
    if any(k.endswith(".attn.scale") for k in sd):
        raise StaError(f"{what} uses cosine attention (VideoMAE V2 cos_attn), which sta does not implement")
    pos = sd.pop("pos_embed", None)  # mmaction2 keeps the (fixed) sinusoid table: checked, then recomputed
    return Weights(sd, videomae.shapes_from_state_dict(sd), pos)


def _videomae_fields(source, config: dict, shapes: dict, arch: ArchOverrides, prov: Provenance, what: str) -> dict:
    """Architecture fields from sta's or transformers' config (checked against the weights), else the weights."""
    if "architecture" in config:
        fields, names = videomae.VideoMAEConfig.from_dict(config.get("model")).to_dict(), _VIDEOMAE_SHAPE_NAMES
    elif config.get("model_type") == "videomae" or "hidden_size" in config:
        fields, names = videomae.VideoMAEConfig.from_hf(config).to_dict(), _HF_NAMES
    else:
        return _videomae_from_weights(source, shapes, arch, prov, what)
    _check_against_weights(fields, shapes, names, what, stated=config if names is _HF_NAMES else None)
    for k in _VIDEOMAE_INPUT:
        prov.set(k, fields[k], CONFIG)
    if "hidden_size" in config and "architecture" not in config and arch.num_heads is None:
        _converted_small_heads(source, fields, prov)
    return fields


def _converted_small_heads(source, fields: dict, prov: Provenance) -> None:
    """The MCG-NJU ViT-S repos run with 6 heads (the original's), whatever their config.json says."""
    if (fields["embed_dim"], fields["depth"], fields["num_heads"]) == (384, 12, 16) and _repo_ids(source) & set(
        CONVERTED_6_HEAD_SMALL
    ):
        fields["num_heads"] = 6
        prov.set(
            "num_heads",
            6,
            KNOWN,
            "converted from the original 6-head ViT-S, its config.json says 16; --num-heads 16 follows the config",
        )


def _videomae_from_weights(source, shapes: dict, arch: ArchOverrides, prov: Provenance, what: str) -> dict:
    """No config: the weights give the widths; a released architecture gives its heads and input, else options must."""
    rel = videomae.released(shapes)
    prov.set(
        "architecture", rel[0] if rel else f"{shapes['embed_dim']}-wide, {shapes['depth']}-block VideoMAE", WEIGHTS
    )
    if rel is None:
        missing = [k for k in _VIDEOMAE_INPUT if getattr(arch, k) is None] + [
            k for k in ("mean", "std") if getattr(arch, k) is None
        ]
        if missing:
            raise _missing_error(what, f"a {shapes['embed_dim']}-wide, {shapes['depth']}-block VideoMAE", missing)
        return dict(shapes, **{k: getattr(arch, k) for k in _VIDEOMAE_INPUT})
    defaults = {"num_heads": rel[1], **videomae.RELEASED_INPUT}
    for k, v in defaults.items():
        prov.set(k, v, ASSUMED, f"released {rel[0]}")
    return dict(shapes, **defaults)


def _videomae_check_input(cfg: videomae.VideoMAEConfig, weights: Weights, what: str) -> None:
    pos = weights.position_table
    if pos is not None and pos.dim() == 3 and pos.shape[1] != cfg.num_tokens:
        raise StaError(
            f"{what}: its position table has {pos.shape[1]} tokens, a {cfg.num_frames}x{cfg.image_size}^2 "
            f"input gives {cfg.num_tokens}: pass --num-frames / --image-size"
        )
    if pos is not None and pos.dim() == 3 and pos.shape[2] == cfg.embed_dim:
        # A saved table is either the fixed sinusoid (mmaction2 keeps it as a buffer) or a learned one
        # (the original code's use_learnable_pos_emb); sta computes the sinusoid, so a learned one
        # would silently be replaced. 1e-2 absorbs fp16 / bf16 storage of the sinusoid.
        diff = (pos.float() - videomae.sinusoid_table(cfg.num_tokens, cfg.embed_dim).float()).abs().max().item()
        if not diff <= 1e-2:
            raise StaError(
                f"{what} has a learned position embedding (pos_embed differs from VideoMAE's sinusoid table "
                f"by {diff:.3g}): sta implements the fixed sinusoid table only"
            )


# --- Video Swin ----------------------------------------------------------------------------------------

_SWIN_INPUT = ("image_size", "num_frames")
_SWIN_SHAPE_NAMES = {
    k: k for k in ("embed_dim", "depths", "num_heads", "window_size", "patch_size", "num_classes", "in_chans")
}


def _videoswin_weights(raw: dict, sd: dict, config: dict, arch: ArchOverrides, what: str) -> Weights:
    # The window: from the relative_position_index buffers (which the filter drops), else sta's config.
    model = config.get("model") if "architecture" in config else None
    stated = model.get("window_size") if isinstance(model, dict) else None
    stated = tuple(stated) if isinstance(stated, list) else None  # not a list: VideoSwinConfig says so later
    try:
        shapes = videoswin.shapes_from_state_dict(sd, videoswin.index_buffer(raw), stated)
    except StaError as e:
        raise StaError(f"{what}: {e}") from None
    absent = [name for name in ("patch_norm", "qkv_bias") if not shapes[name]]
    if absent and any(k.startswith("features.") for k in raw):
        # torchvision's SwinTransformer3d always has both: without them the file is damaged, not another model
        raise StaError(
            f"{what}: a torchvision Video Swin without {' and '.join(absent)} weights (torchvision has them)"
        )
    if arch.num_heads is not None:
        raise StaError(
            f"--num-heads does not apply to Video Swin: its head counts {list(shapes['num_heads'])} are in its weights"
        )
    return Weights(sd, shapes)


def _videoswin_fields(source, config: dict, shapes: dict, arch: ArchOverrides, prov: Provenance, what: str) -> dict:
    """Architecture fields from sta's config (checked against the weights), else the weights and released input."""
    if "architecture" in config:
        fields = videoswin.VideoSwinConfig.from_dict(config.get("model")).to_dict()
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        _check_against_weights(fields, shapes, _SWIN_SHAPE_NAMES, what)
        for k in _SWIN_INPUT:
            prov.set(k, fields[k], CONFIG)
        return fields
    rel = videoswin.released(shapes)
    prov.set("architecture", rel or f"{shapes['embed_dim']}-wide Video Swin {list(shapes['depths'])}", WEIGHTS)
    if rel is None and source.alias is None:
        missing = [k for k in (*_SWIN_INPUT, "mean", "std") if getattr(arch, k) is None]
        if missing:
            raise _missing_error(
                what, f"a {shapes['embed_dim']}-wide Video Swin with depths {list(shapes['depths'])}", missing
            )
    origin, why = (ASSUMED, f"released {rel}") if rel else (ALIAS, source.alias.name if source.alias else None)
    for k, v in videoswin.RELEASED_INPUT.items():
        prov.set(k, v, origin, why)
    return dict(shapes, **videoswin.RELEASED_INPUT)


# --- the table -----------------------------------------------------------------------------------------

FAMILIES: dict[str, Family] = {
    "videomae": Family(
        module=videomae,
        config=videomae.VideoMAEConfig,
        model=videomae.VideoMAE,
        read_weights=_videomae_weights,
        read_fields=_videomae_fields,
        check_input=_videomae_check_input,
        key_prefixes=(
            "videomae.",
            "blocks.",
            "patch_embed.proj",
            "backbone.blocks.",
            "backbone.patch_embed.projection",
        ),
        inputs=_VIDEOMAE_INPUT,
        short_side=lambda crop: crop,  # resized straight to the crop size
        kinetics_stride=4,
        protocol="videomae",
        display_name="VideoMAE",
    ),
    "videoswin": Family(
        module=videoswin,
        config=videoswin.VideoSwinConfig,
        model=videoswin.VideoSwin,
        read_weights=_videoswin_weights,
        read_fields=_videoswin_fields,
        check_input=None,
        key_prefixes=("features.", "backbone.layers.", "layers."),
        inputs=_SWIN_INPUT,
        # Single view as the checkpoints were validated: short side 256, centre crop 224 (scaled with the input).
        short_side=lambda crop: round(crop * 256 / 224),
        kinetics_stride=2,
        protocol="mmaction",
        display_name="Video Swin",
    ),
}
# Which family a checkpoint without a config is for is tested in this order: Video Swin keys also
# start with patch_embed.proj.
KEY_TEST_ORDER = ("videoswin", "videomae")


def family_of(config: dict, alias: Alias | None, sd: dict[str, torch.Tensor]) -> str:
    """Which backbone a checkpoint is for: from sta's config, the alias, transformers' model_type, or its keys."""
    if "architecture" in config:
        return config["architecture"]
    if alias is not None:
        return alias.family
    if config.get("model_type") == "videomae":
        return "videomae"
    for family in KEY_TEST_ORDER:
        if any(k.startswith(FAMILIES[family].key_prefixes) for k in sd):
            return family
    return "videomae"


# --- what every family shares ----------------------------------------------------------------------


def _labels(config: dict, num_classes: int, prov: Provenance, dataset: str | None = None) -> list[str]:
    if isinstance(config.get("labels"), list) and len(config["labels"]) == num_classes:
        return [str(v) for v in config["labels"]]
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and len(id2label) == num_classes:
        return [str(id2label.get(str(i), id2label.get(i, f"class_{i}"))) for i in range(num_classes)]
    known = DATASET_LABELS.get(num_classes)
    if known is not None and dataset in (None, "kinetics400", "ssv2"):
        name, labels = known
        origin = ALIAS if dataset else ASSUMED
        prov.set("labels", name, origin, None if dataset else f"a {num_classes}-class head")
        return labels()
    return [f"class_{i}" for i in range(num_classes)]


def _preprocessing(
    source,
    num_frames: int,
    image_size: int,
    short_side: int,
    stride: int,
    arch: ArchOverrides,
    prov: Provenance,
    family: str,
    what: str,
) -> dict:
    """How clips are sampled and normalised (sta's spelling); mean/std from an option, the
    preprocessor_config.json, or the released models' ImageNet values.

    The protocol is the one the STA paper evaluates with (Sec. 4.1, "following [35, 23]"): VideoMAE
    ViTs take 16 frames at stride 4 on K400 (stride 2 on SSv2), the short side resized to 224 and
    224^2 crops; Video Swin takes 32 frames at stride 2. docs/algorithm.md ("Evaluation sampling
    and preprocessing") has the table and the multi-view details."""
    pre = source.preprocessor if isinstance(source.preprocessor, dict) else {}
    crop = pre.get("crop_size", image_size)
    crop = crop.get("height", image_size) if isinstance(crop, dict) else crop
    if crop != image_size and arch.image_size is None:
        raise StaError(
            f"{what}: its preprocessor_config.json crops {crop}px frames, its config.json says the model takes "
            f"{image_size}px (image_size): the two disagree; pass --image-size to choose"
        )
    out = {
        "num_frames": num_frames,
        "frame_stride": stride,
        "short_side": short_side,
        "crop_size": image_size,  # the config's, or --image-size when given
        "value_range": _value_range(pre, prov, what),
    }
    for name, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        given = getattr(arch, name)
        if given is not None:
            value, origin, why = given, OPTION, None
        elif pre.get("do_normalize") is False:  # transformers' processor then feeds the rescaled [0, 1] pixels
            value, origin, why = (0.0, 0.0, 0.0) if name == "mean" else (1.0, 1.0, 1.0), CONFIG, "do_normalize false"
        elif f"image_{name}" in pre:
            value, origin, why = tuple(pre[f"image_{name}"]), CONFIG, None
        else:
            value, origin, why = default, ASSUMED, f"ImageNet, as {family} was trained"
        out[name] = list(ArchOverrides.parse(**{name: value}).given()[name])
        prov.set(name, tuple(out[name]), origin, why)
    return out


def _value_range(pre: dict, prov: Provenance, what: str) -> float:
    """The largest input pixel value before mean/std: transformers' processor multiplies 0..255 pixels
    by rescale_factor (1/255 by default) when do_rescale, and feeds them as they are when not."""
    if pre.get("do_rescale") is False:
        value, why = 255.0, "do_rescale false"
    elif "rescale_factor" in pre:
        factor = pre["rescale_factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
            raise StaError(f"{what}: its preprocessor_config.json's rescale_factor {factor!r} is not a positive number")
        value, why = 255.0 * factor, f"rescale_factor {factor:g}"
    else:
        return 1.0
    prov.set("value_range", value, CONFIG, why)
    return value


def _overridden(pre: dict, cfg, arch: ArchOverrides) -> dict:
    """A config's preprocessing, following explicit options (input size, frames, mean, std)."""
    pre = dict(pre)
    if arch.image_size is not None and pre.get("crop_size"):
        pre["short_side"] = round(pre.get("short_side", pre["crop_size"]) * arch.image_size / pre["crop_size"])
        pre["crop_size"] = arch.image_size
    if arch.num_frames is not None:
        pre["num_frames"] = cfg.num_frames
    pre.update({k: list(v) for k, v in (("mean", arch.mean), ("std", arch.std)) if v is not None})
    return pre


def _stride(source, num_classes: int, kinetics_stride: int, prov: Provenance) -> int:
    if source.alias is not None:
        prov.set("frame_stride", source.alias.frame_stride, ALIAS)
        return source.alias.frame_stride
    stride = 2 if num_classes == 174 else kinetics_stride
    prov.set(
        "frame_stride",
        stride,
        ASSUMED,
        "the release's Something-Something v2 protocol" if num_classes == 174 else "the release's Kinetics protocol",
    )
    return stride


def _build(
    family: Family, source, raw: dict[str, torch.Tensor], sta: STAConfig, arch: ArchOverrides, prov: Provenance
) -> Built:
    """The model with its weights and STA setting, its labels and preprocessing."""
    config = source.config or {}
    what = f"{source.spec} ({source.weights_label})"
    weights = family.read_weights(raw, family.module.checkpoint_filter_fn(raw), config, arch, what)
    fields = family.read_fields(source, config, weights.shapes, arch, prov, what)
    for k in family.inputs:
        if getattr(arch, k) is not None:
            fields[k] = getattr(arch, k)
            prov.set(k, fields[k], OPTION)
    cfg = family.config(**fields)
    if family.check_input is not None:
        family.check_input(cfg, weights, what)
    model = build_checked(lambda: family.model(cfg), weights.state_dict, what)
    model.set_sta(sta)
    labels = _labels(config, cfg.num_classes, prov, source.alias.dataset if source.alias else None)
    if isinstance(config.get("preprocessing"), dict):  # sta's config (artifacts before 0.2 name no protocol)
        return Built(model, labels, {"protocol": family.protocol, **_overridden(config["preprocessing"], cfg, arch)})
    stride = _stride(source, cfg.num_classes, family.kinetics_stride, prov)
    short_side = family.short_side(cfg.image_size)
    pre = _preprocessing(
        source, cfg.num_frames, cfg.image_size, short_side, stride, arch, prov, family.display_name, what
    )
    return Built(model, labels, {**pre, "protocol": family.protocol})


def build_from_source(source, sta: STAConfig | None = None) -> nn.Module:
    """A Source (see io.checkpoints.resolve) -> eval-mode model with weights and its ModelCard
    (labels, preprocessing, family, source name, provenance), attached here and nowhere else.

    `source.arch` (ArchOverrides) overrides what the config or the released defaults say. The card's
    `provenance` says where each value came from; values no config gave are logged on stderr.
    """
    from ..io.checkpoints import read_state_dict

    sd = read_state_dict(source.weights)
    config = source.config or {}
    family = family_of(config, source.alias, sd)
    if family not in FAMILIES:
        raise StaError(f"{source.spec}: unsupported architecture {family!r} (supported: {', '.join(FAMILIES)})")
    arch = getattr(source, "arch", None) or ArchOverrides()
    prov = Provenance()
    built = _build(FAMILIES[family], source, sd, sta or STAConfig(), arch, prov)
    if source.is_artifact and isinstance(config.get("provenance"), dict) and not arch.given():
        provenance = config["provenance"]  # how the artifact's source was read
    else:
        provenance = prov.to_dict()
        prov.report(source.name)
    built.model.card = ModelCard(family, source.name, built.labels, built.preprocessing, provenance)  # the one place
    return built.model.eval()
