"""The library API behind the CLI: load a model, prune it into an artifact, compare pruned vs unpruned."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import __version__
from .log import Log, quiet
from .errors import StaError, ValidationFailed
from .flops import FLOPS_LABEL, gflops
from .io import outputs
from .io.artifact import ARTIFACT, write_manifest, write_model
from .io.checkpoints import Source, resolve
from .io.video import load_clip, synthetic_clip
from .models import build_from_source
from .models.overrides import ArchOverrides
from .pruning import STAConfig




def sta_config(base: STAConfig | None = None, r1: int | None = None, **options) -> STAConfig:
    """`base` (default: no pruning) with r1 and any STA options given (None means unchanged)."""
    changes = {k: v for k, v in {"r1": r1, **options}.items() if v is not None}
    return dataclasses.replace(base or STAConfig(), **changes)


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
    model = from_source(source, r1, **sta_options).to(device)
    if compile:
        from .compiled import compile_model

        model = compile_model(model, mode=compile if isinstance(compile, str) else None)
    return model


def from_source(source: Source, r1: int | None = None, **sta_options) -> nn.Module:
    base = STAConfig.from_dict(source.sta) if source.is_artifact else None
    return build_from_source(source, sta_config(base, r1, **sta_options))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sample_clip(model: nn.Module, clip: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """The validation clip: decoded from `clip`, else the demo model's own sample, else the deterministic
    synthetic one (whose plain moving square a model trained on other data need not recognise)."""
    if clip is None and getattr(model, "source_name", None) == "demo":
        from .demo import sample_path

        clip = sample_path()
    if clip is not None:
        return load_clip(Path(clip), model.preprocessing), str(clip)
    return synthetic_clip(model.preprocessing), "synthetic"


@torch.no_grad()
def compare(unpruned_logits: torch.Tensor, pruned_logits: torch.Tensor) -> dict:
    """Agreement of pruned with unpruned predictions, averaged over the batch."""
    top1 = (unpruned_logits.argmax(-1) == pruned_logits.argmax(-1)).float().mean().item()
    k = min(5, unpruned_logits.shape[-1])
    a, b = unpruned_logits.topk(k, -1).indices, pruned_logits.topk(k, -1).indices
    overlap = (a[:, :, None] == b[:, None, :]).any(-1).float().mean().item()
    cosine = F.cosine_similarity(unpruned_logits.float(), pruned_logits.float(), dim=-1).mean().item()
    return {"top1_agreement": top1, f"top{k}_overlap": overlap, "logit_cosine": cosine}


def top_labels(model: nn.Module, probs: torch.Tensor, k: int = 5) -> list[dict]:
    """The k most probable labels of one prediction (probs: (classes,))."""
    p, i = probs.float().topk(min(k, probs.numel()))
    return [{"label": model.labels[j], "index": int(j), "prob": float(q)} for q, j in zip(p.tolist(), i.tolist())]


def paper_r1(model: nn.Module) -> int:
    """The paper's headline setting scaled to the model: 64 of ViT-B's 196 tokens per frame, as a share
    of the tokens per temporal slice where pruning starts (Video Swin: 256 of 28x28; the demo: 21 of 64)."""
    _, h, w = model.pruning_grid
    return max(1, round(64 * h * w / 196))


def check_finite(model: nn.Module, logits: dict[str, torch.Tensor], clip_name: str) -> None:
    """Non-finite logits are a wrong answer, never a result: name the weights that cause them if any."""
    bad = [name for name, t in logits.items() if not torch.isfinite(t).all()]
    if not bad:
        return
    tensors = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    cause = f"the weights hold NaN or inf ({tensors[0]}{' and more' if len(tensors) > 1 else ''})" if tensors else "overflow"
    where = "the synthetic clip" if clip_name == "synthetic" else clip_name
    models = f"the {' and '.join(bad)} model{'s give' if len(bad) > 1 else ' gives'}"
    raise ValidationFailed(f"{models} non-finite logits (NaN or inf) on {where}: {cause}")


def default_output(source_name: str, r1: int) -> Path:
    return Path(f"{source_name}-sta-r{r1}")


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
) -> dict:
    """Prune `spec` with STA and write an artifact folder. Returns the report (also in OUT/report.json).

    r1 = None keeps an artifact's setting, and otherwise takes `paper_r1(model)`. num_heads,
    image_size, num_frames, mean and std: as for `load`.

    Validates on a sample clip: the artifact reloaded with r1 = 0 must reproduce the source
    checkpoint exactly, and the pruned model is compared with the unpruned one.
    """
    if out is not None:
        outputs.check_folder_target(Path(out), force)
    arch = ArchOverrides.parse(num_heads, image_size, num_frames, mean, std)
    log(f"resolving {spec}")
    source = resolve(str(spec), revision=revision, token=token, arch=arch)
    base = STAConfig.from_dict(source.sta) if source.is_artifact else None
    if r1 is not None or base is not None:
        sta = sta_config(base, r1, **sta_options)
        out = Path(out) if out is not None else default_output(source.name, sta.r1)
        outputs.check_folder_target(out, force)
    log(f"loading weights ({', '.join(p.name for p in source.weights)})")
    model = build_from_source(source, STAConfig())  # unpruned first: the reference
    if r1 is None and base is None:  # the default depends on the model's token grid
        sta = sta_config(None, paper_r1(model), **sta_options)
        out = Path(out) if out is not None else default_output(source.name, sta.r1)
        outputs.check_folder_target(out, force)
    unpruned_tokens, unpruned_flops = model.tokens_per_stage, gflops(model)
    model.set_sta(sta)  # validates r1 against the token grid
    log("counting FLOPs")
    pruned_flops = gflops(model)

    x, clip_name = sample_clip(model, clip)
    log(f"validating on {'the synthetic clip' if clip_name == 'synthetic' else clip_name}")
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

    report = {
        "sta_version": __version__,
        "source": {"spec": str(spec), "name": source.name, "hub": source.hub, "files": [p.name for p in source.weights]},
        "model": {"family": model.family, "params": count_params(model), "config": model.cfg.to_dict(),
                  "provenance": model.provenance},
        "sta": sta.to_dict(),
        "tokens": {"unpruned": unpruned_tokens, "pruned": model.tokens_per_stage},
        "gflops": {
            "convention": FLOPS_LABEL,
            "unpruned": round(unpruned_flops, 3),
            "pruned": round(pruned_flops, 3),
            "reduction": round(1 - pruned_flops / unpruned_flops, 4),
        },
        "validation": {
            "clip": clip_name,
            "kept_tokens_per_stage": kept,
            "top5_unpruned": top_labels(model, ref.float().softmax(-1)[0]),
            "top5_pruned": top_labels(model, pruned.float().softmax(-1)[0]),
            **compare(ref, pruned),
            "seconds_one_clip_cpu": {"unpruned": round(t_unpruned, 4), "pruned": round(t_pruned, 4)},
        },
    }
    log(f"writing {out}")
    with outputs.new_folder(out, force) as tmp:
        write_model(tmp, model, sta)
        # The artifact must stand on its own: reload it unpruned and compare with the source.
        reloaded = from_source(resolve(str(tmp)), r1=0)
        diff = (reloaded(x) - ref).abs().max().item()
        report["validation"]["reproduces_source"] = {"max_abs_diff": diff, "ok": diff <= 1e-5}
        if not diff <= 1e-5:  # NaN compares False: it fails too
            raise ValidationFailed(f"the written artifact does not reproduce the source (max abs logit diff {diff:.3g})")
        outputs.write_json(tmp / "report.json", report)
        write_manifest(tmp, ARTIFACT, ["model.safetensors", "config.json", "sta.json", "report.json"])
    report["output"] = str(out)
    return report
