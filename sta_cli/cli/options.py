"""Option types every command shares: the same flag means the same thing, with the same help and
default, wherever it appears. The STA options are added to a command by one decorator."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated

import typer

from ..pruning import STAConfig
from ..pruning.config import FIRST_GROUP, ORDERS, SCHEDULES, SCORES, SIMILARITIES
from ..runtime.device import DEVICE_HELP

_D = STAConfig()


def _choices(values) -> str:
    return " | ".join(values)


# --- what to run on ------------------------------------------------------------------------------------

MODEL_HELP = "Artifact folder, alias (see `sta models`), Hub repo id, local folder or weights file."
Model = Annotated[str, typer.Option("--model", "-m", metavar="MODEL", show_default=False, help=MODEL_HELP)]
ModelOrDefault = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        show_default="the artifact `sta prune` left here, else the packaged demo model",
        help=MODEL_HELP,
    ),
]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="torch.compile (fullgraph) the model: profile times it beside eager, eval runs every setting compiled.",
    ),
]
R1 = Annotated[
    int | None,
    typer.Option(
        "--r1",
        metavar="INT",
        show_default="an artifact's own r1, else the paper's 64 of 196 scaled to the model",
        help="Tokens dropped per frame at the first STA stage (0 = no pruning).",
    ),
]
Clip = Annotated[
    Path | None,
    typer.Option(
        "--clip",
        metavar="CLIP",
        show_default="the demo's sample clip for the demo, else a synthetic clip",
        help="Video to validate on.",
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        show_default=False,
        help="Replace an existing output that sta wrote (never another folder, the current one or its parents).",
    ),
]
Revision = Annotated[
    str | None,
    typer.Option("--revision", metavar="REV", show_default="main", help="Hub revision (branch, tag or commit)."),
]
Token = Annotated[
    str | None, typer.Option("--token", metavar="TOKEN", show_default="the logged-in one", help="Hugging Face token.")
]
Device = Annotated[
    str,
    typer.Option(
        "--device", metavar="DEVICE", help=f"Where PyTorch runs: {DEVICE_HELP}; cuda without a GPU is an error."
    ),
]
# profile and eval: the same forward passes over the same views (each command has its own default).
Batch = Annotated[
    int,
    typer.Option("--batch", "-b", metavar="INT", help="Clips per forward pass (profile: also the batch it times)."),
]
Views = Annotated[
    str,
    typer.Option(
        "--views",
        metavar="TxS",
        help="Views per video: T clips spread over the video x S crops along its long side, softmax averaged "
        "(VideoMAE's K400 protocol: 5x3).",
    ),
]
Json = Annotated[
    bool, typer.Option("--json", show_default=False, help="Print the result as one JSON object on stdout.")
]


# --- the STA options -----------------------------------------------------------------------------------

_STA_PARAMETERS = [
    (
        "first_group",
        str | None,
        typer.Option(
            "--first-group",
            metavar="NAME",
            show_default=f"{_D.first_group}, or an artifact's own",
            help=f"Image-style drop on the first visited group: {_choices(FIRST_GROUP)}.",
        ),
    ),
    (
        "seed",
        int | None,
        typer.Option(
            "--seed",
            metavar="INT",
            show_default=str(_D.seed),
            help="Seed for --first-group random | grid and --score random.",
        ),
    ),
    (
        "order",
        str | None,
        typer.Option(
            "--order",
            metavar="NAME",
            show_default=f"{_D.order}, or an artifact's own",
            help=f"Group visiting order per stage (f: first to last, b: last to first): {_choices(ORDERS)}.",
        ),
    ),
    (
        "schedule",
        str | None,
        typer.Option(
            "--schedule",
            metavar="NAME",
            show_default=f"{_D.schedule}, or an artifact's own",
            help=f"Drops across stages: {_choices(SCHEDULES)}.",
        ),
    ),
    (
        "similarity",
        str | None,
        typer.Option(
            "--similarity",
            metavar="NAME",
            show_default=f"{_D.similarity}, or an artifact's own",
            help=f"Feature behind the token affinity: {_choices(SIMILARITIES)}.",
        ),
    ),
    (
        "score",
        str | None,
        typer.Option(
            "--score",
            metavar="NAME",
            show_default=f"{_D.score}, or an artifact's own",
            help=f"Pruning score: {_choices(SCORES)} (random: the paper's baseline).",
        ),
    ),
]
STA_NAMES = [name for name, _, _ in _STA_PARAMETERS]


# --- what the weights cannot tell ----------------------------------------------------------------------

_ARCH_PARAMETERS = [
    (
        "num_heads",
        int | None,
        typer.Option(
            "--num-heads",
            metavar="INT",
            show_default="the config's, else the released model's",
            help="Attention heads (VideoMAE).",
        ),
    ),
    (
        "image_size",
        int | None,
        typer.Option(
            "--image-size",
            metavar="PIXELS",
            show_default="the config's, else the released model's",
            help="Input height = width.",
        ),
    ),
    (
        "num_frames",
        int | None,
        typer.Option(
            "--num-frames",
            metavar="INT",
            show_default="the config's, else the released model's",
            help="Frames per clip.",
        ),
    ),
    (
        "mean",
        str | None,
        typer.Option(
            "--mean",
            metavar="R,G,B",
            show_default="the preprocessor config's, else ImageNet's for released models",
            help="Normalisation mean of [0, 1] pixels.",
        ),
    ),
    (
        "std",
        str | None,
        typer.Option(
            "--std",
            metavar="R,G,B",
            show_default="the preprocessor config's, else ImageNet's for released models",
            help="Normalisation std of [0, 1] pixels.",
        ),
    ),
]


def _adding(parameters: list, pack):
    """A decorator adding `parameters` (name, type, typer.Option) to a command's signature; the
    command receives them packed by `pack(given: dict) -> (keyword, value)`."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)  # real types: the module may defer annotations
        keyword, _ = pack({})
        params = [p for p in signature.parameters.values() if p.name != keyword]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, option])
            for name, kind, option in parameters
        ]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            keyword, value = pack({name: kwargs.pop(name) for name, _, _ in parameters})
            return command(*args, **{keyword: value}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=_ordered(params + extra))
        return wrapper

    return decorate


def _pack_arch(given: dict):
    from ..models.overrides import ArchOverrides

    return "arch", ArchOverrides.parse(**given)


def _pack_sta(given: dict):
    return "sta_options", {k: v for k, v in given.items() if v is not None}  # checked by runtime.loading.sta_config


# Add the architecture options; the command receives them as one `arch` (models.ArchOverrides).
arch_options = _adding(_ARCH_PARAMETERS, _pack_arch)
# Add the STA options; the command receives the ones the user gave as one dict, `sta_options`.
sta_options = _adding(_STA_PARAMETERS, _pack_sta)


def _ordered(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """Keyword-only parameters after the others (what inspect.Signature requires)."""
    kinds = [p for p in params if p.kind != inspect.Parameter.KEYWORD_ONLY]
    return kinds + [p for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY]
