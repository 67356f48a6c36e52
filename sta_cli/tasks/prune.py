"""`sta prune`: prune a checkpoint with STA and write a validated artifact folder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .. import __version__
from ..errors import ValidationFailed
from ..flops import FLOPS_LABEL, gflops
from ..io import outputs
from ..io.artifact import ARTIFACT, write_manifest, write_model
from ..io.checkpoints import Source, resolve, sharing_weights
from ..log import Log, quiet
from ..models import build_from_source
from ..models.overrides import ArchOverrides
from ..pruning import STAConfig
from ..runtime.loading import default_output, from_source, sample_clip, sta_config, task_sta
from ..runtime.predict import Label, check_finite, compare, count_params, top_labels

REPRODUCE_ATOL = 1e-5  # the artifact reloaded unpruned must give the source's logits to this


@dataclass
class SourceInfo:
    spec: str
    name: str
    hub: dict | None
    files: list[str]


@dataclass
class ModelInfo:
    family: str
    params: int
    config: dict
    provenance: dict


@dataclass
class Tokens:
    unpruned: list[int]
    pruned: list[int]


@dataclass
class GFlops:
    convention: str
    unpruned: float
    pruned: float
    reduction: float


@dataclass
class PairSeconds:
    unpruned: float
    pruned: float


@dataclass
class Reproduction:
    """The written artifact reloaded with r1 = 0 against the source checkpoint."""

    max_abs_diff: float
    ok: bool


@dataclass
class PruneValidation:
    clip: str
    kept_tokens_per_stage: list[int]
    top5_unpruned: list[Label]
    top5_pruned: list[Label]
    top1_agreement: float
    top5_overlap: float
    logit_cosine: float
    seconds_one_clip_cpu: PairSeconds
    reproduces_source: Reproduction | None = None


@dataclass
class PruneReport:
    """What `sta prune` measured: OUT/report.json (without `output`), and `--json`."""

    sta_version: str
    source: SourceInfo
    model: ModelInfo
    sta: dict
    tokens: Tokens
    gflops: GFlops
    validation: PruneValidation
    output: str | None = None

    def record(self) -> dict:
        """report.json: the report without where the folder ended up (it may be moved)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "output"}


@dataclass
class _Plan:
    source: Source
    model: nn.Module  # unpruned
    sta: STAConfig
    out: Path


@torch.no_grad()
def prune(
    spec: str | Path,
    r1: int | None = None,
    out: str | Path | None = None,
    *,
    clip: str | Path | None = None,
    force: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    log: Log = quiet,
    num_heads: int | None = None,
    image_size: int | None = None,
    num_frames: int | None = None,
    mean: tuple[float, float, float] | str | None = None,
    std: tuple[float, float, float] | str | None = None,
    **sta_options,
) -> PruneReport:
    """Prune `spec` with STA and write an artifact folder. Returns the report (also in OUT/report.json).

    r1 = None keeps an artifact's setting, and otherwise takes `paper_r1(model)`. num_heads,
    image_size, num_frames, mean and std: as for `load`.

    Validates on a sample clip: the artifact reloaded with r1 = 0 must reproduce the source
    checkpoint exactly, and the pruned model is compared with the unpruned one.
    """
    arch = ArchOverrides.parse(num_heads, image_size, num_frames, mean, std)
    plan = _plan(spec, r1, out, force, revision, token, arch, log, sta_options)
    model, sta = plan.model, plan.sta
    unpruned_tokens, unpruned_flops = model.tokens_per_stage, gflops(model)
    model.set_sta(sta)  # validates r1 against the token grid
    log("counting FLOPs")
    pruned_flops = gflops(model)
    x, clip_name = sample_clip(model, clip)
    log(f"validating on {'the synthetic clip' if clip_name == 'synthetic' else clip_name}")
    ref, validation = _validate(model, sta, x, clip_name)
    source = plan.source
    report = PruneReport(
        sta_version=__version__,
        source=SourceInfo(str(spec), source.name, source.hub, [p.name for p in source.weights]),
        model=ModelInfo(model.card.family, count_params(model), model.cfg.to_dict(), model.card.provenance),
        sta=sta.to_dict(),
        tokens=Tokens(unpruned_tokens, model.tokens_per_stage),
        gflops=GFlops(
            FLOPS_LABEL,
            round(unpruned_flops, 3),
            round(pruned_flops, 3),
            round(1 - pruned_flops / unpruned_flops, 4),
        ),
        validation=validation,
    )
    log(f"writing {plan.out}")
    _write(plan.out, force, model, sta, x, ref, report)
    report.output = str(plan.out)
    return report


def _plan(spec, r1, out, force, revision, token, arch, log: Log, sta_options: dict) -> _Plan:
    """Resolve the source, build it unpruned (the reference) and settle r1 and OUT, failing before
    any heavy work when OUT cannot be written."""
    if out is not None:
        outputs.check_folder_target(Path(out), force)
    log(f"resolving {spec}")
    source = resolve(str(spec), revision=revision, token=token, arch=arch)
    base = STAConfig.from_dict(source.sta) if source.is_artifact else None
    sta = None
    if r1 is not None or base is not None:  # known before the weights are read: check OUT now
        sta = sta_config(base, r1, **sta_options)
        out = _checked_out(out, source, sta, force)
    log(f"loading weights ({source.weights_label})")
    model = build_from_source(source, STAConfig())
    if sta is None:  # the default depends on the model's token grid
        sta = task_sta(None, model, None, **sta_options)
        out = _checked_out(out, source, sta, force)
    return _Plan(source, model, sta, Path(out))


def _checked_out(out, source: Source, sta: STAConfig, force: bool) -> Path:
    out = Path(out) if out is not None else default_output(source.name, sta.r1)
    outputs.check_folder_target(out, force)
    return out


def _validate(model: nn.Module, sta: STAConfig, x: torch.Tensor, clip_name: str):
    """(unpruned logits, the pruned vs unpruned comparison on the clip `x`)."""
    model.set_sta(STAConfig())
    t0 = time.perf_counter()
    ref = model(x)
    t_unpruned = time.perf_counter() - t0
    model.set_sta(sta)
    t0 = time.perf_counter()
    pruned = model(x)
    t_pruned = time.perf_counter() - t0
    kept = [p.shape[1] for p in model.kept_positions]
    check_finite(model, {"unpruned": ref, "pruned": pruned}, clip_name)
    agreement = compare(ref, pruned)
    return ref, PruneValidation(
        clip=clip_name,
        kept_tokens_per_stage=kept,
        top5_unpruned=top_labels(model, ref.float().softmax(-1)[0]),
        top5_pruned=top_labels(model, pruned.float().softmax(-1)[0]),
        **dataclasses.asdict(agreement),
        seconds_one_clip_cpu=PairSeconds(round(t_unpruned, 4), round(t_pruned, 4)),
    )


def _write(out: Path, force: bool, model: nn.Module, sta: STAConfig, x, ref, report: PruneReport) -> None:
    with outputs.new_folder(out, force) as tmp:
        write_model(tmp, model, sta)
        # The artifact must stand on its own: reload it unpruned and compare with the source.
        with sharing_weights(model.state_dict()):  # what equals the model's bytes is not held twice
            reloaded = from_source(resolve(str(tmp)), r1=0)
        diff = (reloaded(x) - ref).abs().max().item()
        report.validation.reproduces_source = Reproduction(diff, diff <= REPRODUCE_ATOL)
        if not diff <= REPRODUCE_ATOL:  # NaN compares False: it fails too
            raise ValidationFailed(
                f"the written artifact does not reproduce the source (max abs logit diff {diff:.3g})"
            )
        outputs.write_json(tmp / "report.json", report.record())
        write_manifest(tmp, ARTIFACT, ["model.safetensors", "config.json", "sta.json", "report.json"])
