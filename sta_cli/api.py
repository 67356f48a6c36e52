"""The library API behind the CLI: load a model, prune it into an artifact, compare pruned vs unpruned."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn

from . import __version__
from .errors import ValidationFailed
from .flops import FLOPS_LABEL, gflops
from .io import outputs
from .io.artifact import ARTIFACT, write_manifest, write_model
from .io.checkpoints import resolve, sharing_weights
from .log import Log, quiet
from .models import build_from_source
from .models.overrides import ArchOverrides
from .pruning import STAConfig
from .runtime.loading import default_output, from_source, paper_r1, sample_clip, sta_config, task_sta  # noqa: F401  (library API)
from .runtime.predict import check_finite, compare, count_params, top_labels  # noqa: F401  (library API)


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
        sta = task_sta(None, model, None, **sta_options)
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
        "source": {
            "spec": str(spec),
            "name": source.name,
            "hub": source.hub,
            "files": [p.name for p in source.weights],
        },
        "model": {
            "family": model.family,
            "params": count_params(model),
            "config": model.cfg.to_dict(),
            "provenance": model.provenance,
        },
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
        with sharing_weights(model.state_dict()):  # what equals the model's bytes is not held twice
            reloaded = from_source(resolve(str(tmp)), r1=0)
        diff = (reloaded(x) - ref).abs().max().item()
        report["validation"]["reproduces_source"] = {"max_abs_diff": diff, "ok": diff <= 1e-5}
        if not diff <= 1e-5:  # NaN compares False: it fails too
            raise ValidationFailed(
                f"the written artifact does not reproduce the source (max abs logit diff {diff:.3g})"
            )
        outputs.write_json(tmp / "report.json", report)
        write_manifest(tmp, ARTIFACT, ["model.safetensors", "config.json", "sta.json", "report.json"])
    report["output"] = str(out)
    return report
