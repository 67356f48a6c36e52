"""`sta profile`: what pruning changes for one model on one video, measured.

For the unpruned and the pruned model: top-5 labels (softmax averaged over the views, as the
evaluation protocols do), parameters, GFLOPs, tokens per stage, latency and throughput (torch
eager, and ONNX Runtime for an exported model), the share of the pruned model's time spent in STA's
token scoring; optionally a picture of the kept tokens and an r1 sweep against random pruning.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .. import __version__
from ..errors import StaError
from ..flops import FLOPS_LABEL, gflops
from ..formats.quantize import INT8_FILE
from ..io.artifact import verify_graph
from ..io.checkpoints import Source, resolve
from ..io.video import VideoWarning, parse_views, read_clip, synthetic_clip
from ..log import Log, quiet
from ..models import build_from_source
from ..models.overrides import ArchOverrides
from ..pruning import STAConfig
from ..runtime import loading
from ..runtime.device import torch_device
from ..runtime.loading import sta_config, task_sta
from ..runtime.measure import CompiledTiming, Timing, TorchTiming, time_torch
from ..runtime.predict import Agreement, Label, check_finite, compare, count_params, top_labels
from .profile_onnx import Int8Report, OnnxReport, onnx_session, time_int8, time_onnx, time_unpruned_onnx

RANDOM_SEEDS = (0, 1, 2)  # random-pruning baseline: mean over these seeds


# --- the report ------------------------------------------------------------------------------------


@dataclass
class ProfileModel:
    spec: str
    name: str
    family: str
    artifact: bool


@dataclass
class ClipInfo:
    """The clip profiled: a video (its container facts and the sampled frame indices) or the synthetic one."""

    path: str | None
    synthetic: bool
    views: str  # "TxS"
    num_frames: int
    frame_stride: int
    crop_size: int
    container: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    frames_from: str | None = None
    fps: float | None = None
    duration: float | None = None
    rotation: int | None = None
    indices: list | None = None


@dataclass
class DeviceInfo:
    type: str
    torch_threads: int
    batch: int


@dataclass
class Side:
    """One column of the profile: the unpruned or the pruned model."""

    top5: list[Label]
    params: int = 0
    gflops: float = 0.0
    tokens_per_stage: list[int] = field(default_factory=list)
    torch: TorchTiming | None = None
    torch_compiled: CompiledTiming | None = None
    onnxruntime: Timing | None = None  # an OnnxTiming when sta profile exported the model itself
    onnxruntime_int8: Timing | None = None


@dataclass(frozen=True)
class ProfileAgreement(Agreement):
    same_top1_after_averaging: bool = False  # the top-1 of the view-averaged softmax


@dataclass(frozen=True)
class RandomAgreement(Agreement):
    seeds: int = len(RANDOM_SEEDS)  # random pruning: the mean over this many seeds


@dataclass
class SweepRow:
    r1: int
    tokens_per_stage: list[int]
    gflops: float
    sta: Agreement
    throughput: float  # clips/s, torch eager
    random: RandomAgreement


@dataclass
class Sweep:
    rows: list[SweepRow]
    png: str


@dataclass
class ProfileReport:
    sta_version: str
    model: ProfileModel
    clip: ClipInfo
    sta: dict
    device: DeviceInfo
    gflops_convention: str
    unpruned: Side
    pruned: Side
    agreement: ProfileAgreement
    onnx: OnnxReport | None = None
    onnx_int8: Int8Report | None = None
    notes: list[str] = field(default_factory=list)  # the choices made on the user's behalf
    warnings: list[str] = field(default_factory=list)  # about the video (e.g. padded frames)
    vis: str | None = None
    sweep: Sweep | None = None


@dataclass
class ProfileRequest:
    """What `profile` was asked, checked and with its defaults filled in, before any model is loaded."""

    clip: Path | None
    model: str
    r1: int | None
    onnx: Path | None
    batch: int
    views: tuple[int, int]
    vis: Path | None
    sweep: list[int] | None
    sweep_png: Path
    runs: int | None
    threads: int | None
    device: torch.device
    revision: str | None
    token: str | bool | None
    arch: ArchOverrides | None
    compile: bool
    sta_options: dict


# --- options ---------------------------------------------------------------------------------------


def parse_sweep(text: str | list[int] | None) -> list[int] | None:
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        values = list(text)
    else:
        try:
            values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
        except ValueError:
            raise StaError(f"--sweep takes comma-separated r1 values such as 0,16,32,48, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise StaError(f"--sweep needs non-negative r1 values, got {text!r}")
    return sorted(set(values))


def _request(clip, model, r1, onnx, batch, views, vis, sweep_r1, sweep_png, runs, threads, device, **rest):
    """The checked request (everything that can fail before loading, fails here) and the notes it implies."""
    from .vis import check_target

    if batch < 1:
        raise StaError(f"--batch must be at least 1, got {batch}")
    if runs is not None and runs < 1:
        raise StaError(f"--runs must be at least 1, got {runs}")
    notes = []
    n_views, sweep_values, dev = parse_views(views), parse_sweep(sweep_r1), torch_device(device)
    model = loading.default_model(model, demo=True, say=notes.append)
    if model is None:
        raise StaError("no model given and no artifact in the current folder: pass --model (see `sta models`)")
    if clip is None:
        clip = loading.demo_clip()
        notes.append(
            f"no clip given: using the demo's sample clip {clip}" if clip else "no clip given: using a synthetic clip"
        )
    if vis is not None:
        check_target(Path(vis))
    default_png = Path(vis).with_name(Path(vis).stem + "-sweep.png") if vis else Path("sweep.png")
    sweep_png = Path(sweep_png) if sweep_png else default_png
    if sweep_values:
        check_target(sweep_png)
        if vis is not None and Path(vis).resolve() == sweep_png.resolve():
            raise StaError(f"--vis and --sweep-png are the same file ({vis}): one picture would replace the other")
    onnx = Path(onnx) if onnx is not None else None
    if onnx is not None and onnx.is_dir():
        raise StaError(f"--onnx {onnx} is a folder; give the .onnx file")
    clip = Path(clip) if clip is not None else None
    vis = Path(vis) if vis is not None else None
    request = ProfileRequest(
        clip, str(model), r1, onnx, batch, n_views, vis, sweep_values, sweep_png, runs, threads, dev, **rest
    )
    return request, notes


# --- the profile -----------------------------------------------------------------------------------


@torch.inference_mode()
def profile(
    clip: str | Path | None = None,
    model: str | Path | None = None,
    *,
    r1: int | None = None,
    onnx: str | Path | None = None,
    batch: int = 1,
    views: str | tuple[int, int] | None = None,
    vis: str | Path | None = None,
    sweep_r1: str | list[int] | None = None,
    sweep_png: str | Path | None = None,
    runs: int | None = None,
    threads: int | None = None,
    device: str = "auto",
    revision: str | None = None,
    token: str | bool | None = None,
    arch: ArchOverrides | None = None,
    log: Log = quiet,
    note: Log | None = None,
    compile: bool = False,
    **sta_options,
) -> ProfileReport:
    """Profile `model` (alias, Hub id, folder, weights file or sta artifact) on the video `clip`.

    No model: the packaged demo model. No clip: the demo's sample clip, else a synthetic clip.
    r1 None: an artifact's own r1, or `runtime.loading.paper_r1` (the paper's 64 of 196, scaled) for a plain model.
    batch: clips per forward pass, as in `sta eval`. device: the one rule of runtime.device.
    threads: CPU threads for torch and ONNX Runtime (default: torch's default). On a busy machine
    fewer threads give steadier numbers: small parallel ops, like STA's scoring, wait for every
    thread of the pool and suffer most when one is descheduled.
    compile: also time the model compiled with torch.compile (sta_cli.compiled), reporting the
    compile time per setting.
    Returns the report (see README); `note` receives the choices made on the user's behalf.
    """
    if threads is not None and threads < 1:
        raise StaError(f"--threads must be at least 1, got {threads}")
    arch = ArchOverrides.merged(arch, sta_options)
    notes: list[str] = []

    def say(msg: str) -> None:
        notes.append(msg)
        (note or log)(msg)

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        request, defaults = _request(
            clip, model, r1, onnx, batch, views, vis, sweep_r1, sweep_png, runs, threads, device,
            revision=revision, token=token, arch=arch, compile=compile, sta_options=sta_options,
        )  # fmt: skip
        for msg in defaults:
            say(msg)
        return _profile(request, log, say, notes)
    finally:
        torch.set_num_threads(before)


def _profile(req: ProfileRequest, log: Log, say: Log, notes: list[str]) -> ProfileReport:
    source, net, sta = _load(req, log, say)
    onnx_path = _onnx_path(req, source, say)
    session = onnx_session(onnx_path, req.threads) if onnx_path is not None else None
    x, clip_info, clip_warnings = _read_clip(req, net.preprocessing, say)
    x = x.to(req.device)
    log("predicting")
    ref, unpruned, pruned, agreement = _predict(net, sta, x, req.batch, clip_info)
    log("counting parameters and FLOPs")
    for side, cfg in ((unpruned, STAConfig()), (pruned, sta)):
        net.set_sta(cfg)
        side.params, side.gflops, side.tokens_per_stage = count_params(net), round(gflops(net), 4), net.tokens_per_stage
    _time_torch(req, net, sta, x, unpruned, pruned, log)
    report = ProfileReport(
        sta_version=__version__,
        model=ProfileModel(req.model, source.name, net.card.family, source.is_artifact),
        clip=clip_info,
        sta=sta.to_dict(),
        device=DeviceInfo(req.device.type, torch.get_num_threads(), req.batch),
        gflops_convention=FLOPS_LABEL,
        unpruned=unpruned,
        pruned=pruned,
        agreement=agreement,
        notes=notes,
        warnings=clip_warnings,
    )
    if session is not None:
        log(f"timing ONNX Runtime ({onnx_path.name})")
        report.onnx = time_onnx(session, onnx_path, net, sta, x, req.batch, req.runs, say)
        session = None  # its weights are freed before the unpruned model is exported and loaded
        _time_other_graphs(req, report, onnx_path, net, sta, x, log, say)
    _pictures(req, report, source, net, sta, x, ref, log)
    net.set_sta(sta)
    return report


def _load(req: ProfileRequest, log: Log, say: Log) -> tuple[Source, nn.Module, STAConfig]:
    """The model (unpruned, on the device) and its STA setting, every r1 asked for checked."""
    log(f"loading {req.model}")
    source = resolve(req.model, revision=req.revision, token=req.token, arch=req.arch)
    net = build_from_source(source, STAConfig()).to(req.device)
    base = STAConfig.from_dict(source.sta) if source.is_artifact else None
    sta = task_sta(base, net, req.r1, **req.sta_options)
    if req.r1 is None:
        say(
            f"r1={sta.r1}: the artifact's own setting"
            if base is not None
            else f"r1={sta.r1} (the paper's 64 of 196 tokens per frame, scaled to this model; choose with --r1)"
        )
    net.set_sta(sta)  # validates r1 (and any sweep value, below) before the heavy work
    if req.compile:
        from ..compiled import check_compilable

        check_compilable(sta)
    for v in req.sweep or []:
        net.set_sta(sta_config(sta, v))
    net.set_sta(STAConfig())
    return source, net, sta


def _onnx_path(req: ProfileRequest, source: Source, say: Log) -> Path | None:
    """--onnx, else the artifact's own model.onnx; checked against the artifact's manifest."""
    path = req.onnx
    if path is None and source.is_artifact and (source.weights[0].parent / "model.onnx").is_file():
        path = source.weights[0].parent / "model.onnx"
        say(f"timing the artifact's exported {path} with ONNX Runtime too")
    if path is not None:
        verify_graph(path)
    return path


def _read_clip(req: ProfileRequest, pre: dict, say: Log) -> tuple[torch.Tensor, ClipInfo, list[str]]:
    """The clip's views (V, C, T, H, W), sampled and preprocessed as the model was evaluated."""
    shape = {"num_frames": pre["num_frames"], "frame_stride": pre["frame_stride"], "crop_size": pre["crop_size"]}
    if req.clip is None:
        if req.views != (1, 1):
            say("--views applies to video files; the synthetic clip has one view")
            req.views = (1, 1)
        return synthetic_clip(pre), ClipInfo(None, True, "1x1", **shape), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VideoWarning)
        decoded = read_clip(req.clip, pre, req.views)
    clip_warnings = []
    for w in caught:
        if issubclass(w.category, VideoWarning):
            clip_warnings.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    info = {**decoded.info.to_dict(), "path": str(req.clip)}
    views = f"{req.views[0]}x{req.views[1]}"
    return (
        decoded.views,
        ClipInfo(synthetic=False, views=views, indices=decoded.indices, **shape, **info),
        clip_warnings,
    )


def _batched(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def _predict(net: nn.Module, sta: STAConfig, x: torch.Tensor, batch: int, clip: ClipInfo):
    """Every view through both models; per-view softmax averaged (VideoMAE's protocol).
    -> (unpruned logits, unpruned Side, pruned Side, agreement)."""
    net.set_sta(STAConfig())
    ref = _batched(net, x, batch)
    net.set_sta(sta)
    pruned = _batched(net, x, batch)
    check_finite(net, {"unpruned": ref, "pruned": pruned}, clip.path or "the synthetic clip")
    sides = [Side(top_labels(net, logits.float().softmax(-1).mean(0))) for logits in (ref, pruned)]
    same = sides[0].top5[0].index == sides[1].top5[0].index
    agreement = ProfileAgreement(**dataclasses.asdict(compare(ref, pruned).rounded()), same_top1_after_averaging=same)
    return ref, sides[0], sides[1], agreement


def _time_torch(req: ProfileRequest, net: nn.Module, sta: STAConfig, x, unpruned: Side, pruned: Side, log: Log):
    """Latency: the same batch of clips for both; the pruned runs also time STA's scoring."""
    xb = x[torch.arange(req.batch) % x.shape[0]]
    configs = {"unpruned": STAConfig(), "pruned": sta}
    log(f"timing torch eager on {req.device} (batch {req.batch})")
    timings = time_torch(net, configs, xb, req.runs)
    unpruned.torch, pruned.torch = timings["unpruned"], timings["pruned"]
    if req.compile:
        compiled = _time_compiled(net, configs, xb, req.runs, log)
        unpruned.torch_compiled, pruned.torch_compiled = compiled["unpruned"], compiled["pruned"]
    net.set_sta(sta)


def _time_compiled(net: nn.Module, configs: dict[str, STAConfig], xb, runs: int | None, log: Log):
    """Latency of `net` compiled (torch.compile, fullgraph) per setting, and the seconds its first call
    took (compilation). Timed after eager, interleaved across the settings like eager."""
    from ..compiled import compile_model, warm_up

    log("compiling with torch.compile (fullgraph; the first call per setting compiles)")
    compiled = compile_model(net)
    seconds = warm_up(compiled, xb, configs)
    log(f"timing torch compiled on {xb.device} (batch {xb.shape[0]})")
    timings = time_torch(compiled, configs, xb, runs, scoring=False)
    return {
        name: CompiledTiming(
            t.latency_ms, t.throughput_clips_per_s, t.runs, t.batch, compile_seconds=round(seconds[name], 3)
        )
        for name, t in timings.items()
    }


def _time_other_graphs(req: ProfileRequest, report: ProfileReport, path: Path, net, sta, x, log: Log, say: Log):
    """After the exported model was timed: when it holds the pruned model, the unpruned one exported and
    timed alike for the other column, and an int8 graph beside it timed too."""
    if report.onnx.matches is not None:
        getattr(report, report.onnx.matches).onnxruntime = report.onnx.timing
    if report.onnx.matches != "pruned" or not sta.enabled:
        return  # the int8 graph beside it was quantised from the float one: another model too
    batch = report.onnx.timing.batch  # the float graph's (a fixed-batch graph sets it): the same for all three
    # The other column: export the unpruned model (a plain ViT graph, quick to export) and time it alike.
    log("exporting the unpruned model to ONNX for the comparison")
    report.unpruned.onnxruntime = time_unpruned_onnx(net, path, x, batch, req.runs, req.threads, say)
    net.set_sta(sta)
    int8_path = path.parent / INT8_FILE
    if int8_path.is_file():
        verify_graph(int8_path)
        log(f"timing ONNX Runtime int8 ({int8_path.name})")
        report.onnx_int8 = time_int8(int8_path, net, sta, x, batch, req.runs, req.threads, say)
        report.pruned.onnxruntime_int8 = report.onnx_int8.timing if report.onnx_int8 else None


def _pictures(req: ProfileRequest, report: ProfileReport, source: Source, net, sta, x, ref, log: Log) -> None:
    """--vis: the kept tokens of the centre view; --sweep: agreement and throughput against r1, drawn."""
    from .vis import draw_kept_tokens, save_sweep_plot

    if req.vis is not None:
        log(f"drawing kept tokens to {req.vis}")
        n_t, n_s = req.views
        centre = (n_t // 2) * n_s + n_s // 2  # views are clip-major
        net.set_sta(sta)
        report.vis = str(draw_kept_tokens(net, x[centre : centre + 1], net.preprocessing, req.vis))
    if req.sweep:
        rows = sweep(net, sta, req.sweep, x, ref, req.batch, req.runs, log)
        title = f"{source.name} on {req.clip.name if req.clip else 'a synthetic clip'}: STA vs random pruning"
        report.sweep = Sweep(rows, str(save_sweep_plot(req.sweep_png, rows, title)))


@torch.inference_mode()
def sweep(
    model: nn.Module,
    sta: STAConfig,
    values: list[int],
    x: torch.Tensor,
    ref: torch.Tensor,
    batch: int,
    runs: int | None,
    log: Log = quiet,
) -> list[SweepRow]:
    """Per r1: agreement with the unpruned logits `ref` over the clip's views for STA and for random
    pruning (mean over RANDOM_SEEDS), GFLOPs and torch-eager throughput."""
    rows = []
    xb = x[torch.arange(batch) % x.shape[0]]
    for r1 in values:
        log(f"sweep: r1={r1}")
        setting = sta_config(sta, r1)
        model.set_sta(setting)
        stats = compare(ref, _batched(model, x, batch)).rounded()
        tokens, flops = model.tokens_per_stage, round(gflops(model), 4)
        throughput = time_torch(model, {"sta": setting}, xb, runs)["sta"].throughput_clips_per_s
        randoms = []
        for seed in RANDOM_SEEDS:
            model.set_sta(STAConfig.random_baseline(r1, seed) if r1 else STAConfig())
            randoms.append(dataclasses.astuple(compare(ref, _batched(model, x, batch))))
        mean = RandomAgreement(*(round(float(v), 5) for v in np.mean(randoms, axis=0)))
        rows.append(SweepRow(r1, tokens, flops, stats, throughput, mean))
    return rows
