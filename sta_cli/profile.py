"""`sta profile`: what pruning changes for one model on one video, measured.

For the unpruned and the pruned model: top-5 labels (softmax averaged over the views, as the
evaluation protocols do), parameters, GFLOPs, tokens per stage, latency and throughput (torch
eager, and ONNX Runtime for an exported model), the share of the pruned model's time spent in STA's
token scoring; optionally a picture of the kept tokens and an r1 sweep against random pruning.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .errors import StaError
from .flops import FLOPS_LABEL, gflops
from .io import outputs
from .io.artifact import MANIFEST, manifest, sta_kind, verify, write_manifest
from .io.checkpoints import resolve
from .io.video import VIDEO_SUFFIXES, VideoWarning, denormalise, parse_views, read_clip, synthetic_clip
from .log import Log, quiet
from .models import build_from_source
from .models.registry import ALIASES
from .pruning import STAConfig
from .runtime import ort
from .runtime.loading import sta_config, task_sta
from .runtime.predict import check_finite, compare, count_params, top_labels

RANDOM_SEEDS = (0, 1, 2)  # random-pruning baseline: mean over these seeds
WARMUP = 2  # untimed calls before timing (first-call allocations, thread pools, caches)


# --- defaults ------------------------------------------------------------------------------------


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


# --- timing --------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def scoring_timer(model: nn.Module, device: torch.device):
    """Time STA's token scoring inside `model`'s forward. Yields a list that collects seconds per call.

    How: the backbone modules call the scoring functions (`similarity_feature`,
    `stage_keep_indices`) through their module globals, and Video Swin its `_similarity` method;
    for the duration of the block each is replaced by a wrapper that times the call (with a device
    sync on GPU, where kernels run asynchronously). Eager CPU ops are synchronous, so the wall
    time around a call is the time the scoring takes. Gathering the kept tokens is not counted:
    it is how pruning is applied, not how tokens are scored.
    """
    module = sys.modules[type(model).__module__]
    spent: list[float] = []

    def timed(fn):
        def wrapper(*args, **kwargs):
            _sync(device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(device)
            spent.append(time.perf_counter() - t0)
            return out

        return wrapper

    patched = [
        (module, n, getattr(module, n)) for n in ("similarity_feature", "stage_keep_indices") if hasattr(module, n)
    ]
    if not patched:
        raise RuntimeError(f"{module.__name__} has no STA scoring function to time")
    for owner, name, fn in patched:
        setattr(owner, name, timed(fn))
    own_method = "_similarity" in type(model).__dict__
    if own_method:
        model._similarity = timed(model._similarity)
    try:
        yield spent
    finally:
        for owner, name, fn in patched:
            setattr(owner, name, fn)
        if own_method:
            del model._similarity


def time_runs(
    fn: Callable[[], object], device: torch.device, runs: int | None, warmup: int = WARMUP, budget: float = 4.0
) -> list[float]:
    """Seconds per call after `warmup` calls; `runs` calls, or as many as fit `budget` (3..20)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    per_call = (time.perf_counter() - t0) / warmup
    n = runs or int(min(20, max(3, budget / max(per_call, 1e-6))))
    times = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def timing_summary(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {
        "latency_ms": round(1000 * median, 3),
        "throughput_clips_per_s": round(batch / median, 3),
        "runs": len(times),
        "batch": batch,
    }


@torch.inference_mode()
def time_torch(
    model: nn.Module,
    configs: dict[str, STAConfig],
    x: torch.Tensor,
    runs: int | None,
    budget: float = 4.0,
    scoring: bool = True,
) -> dict[str, dict]:
    """Median latency of model(x) under each STA setting in `configs`, and the share of each run
    spent in STA's scoring (see scoring_timer; scoring=False for a compiled model, whose scoring
    is fused into its graph).

    The settings take turns run by run, so a change in machine load (other processes, clock
    scaling) hits all of them alike instead of biasing the one measured last.
    """
    device = x.device
    with scoring_timer(model, device) if scoring else contextlib.nullcontext([]) as spent:

        def call(cfg: STAConfig) -> tuple[float, float]:
            model.set_sta(cfg)
            spent.clear()
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            return time.perf_counter() - t0, sum(spent)

        per_call = 0.0
        for cfg in configs.values():
            for _ in range(WARMUP):
                t, _ = call(cfg)
            per_call += t
        n = runs or int(min(20, max(3, budget / max(per_call, 1e-6))))
        times = {name: [] for name in configs}
        scoring = {name: [] for name in configs}
        for _ in range(n):
            for name, cfg in configs.items():
                t, s = call(cfg)
                times[name].append(t)
                scoring[name].append(s)
    out = {}
    for name in configs:
        out[name] = timing_summary(times[name], x.shape[0])
        if not scoring:
            continue
        out[name]["sta_scoring_share"] = round(statistics.median(s / t for s, t in zip(scoring[name], times[name])), 4)
        out[name]["sta_scoring_ms"] = round(1000 * statistics.median(scoring[name]), 3)
    return out


def onnx_session(path: Path, threads: int | None = None):
    """A CPU session for timing (the one session rule: runtime.ort)."""
    return ort.session(path, "cpu", threads)[0]


def onnx_input(session, x: torch.Tensor, batch: int) -> tuple[str, np.ndarray, list[str]]:
    """The session's input name and an input of the requested batch (or the fixed one it declares)."""
    spec = session.get_inputs()[0]
    notes = []
    dim0 = spec.shape[0] if spec.shape else None
    if isinstance(dim0, int) and dim0 != batch:
        notes.append(f"the ONNX model has a fixed batch of {dim0}: timed at batch {dim0}")
        batch = dim0
    expected = [d for d in spec.shape[1:]]
    if all(isinstance(d, int) for d in expected) and list(x.shape[1:]) != expected:
        raise StaError(f"the ONNX model expects inputs of shape {spec.shape}, the clip is {tuple(x.shape[1:])}")
    xb = x[torch.arange(batch) % x.shape[0]].float().cpu().numpy()
    return spec.name, xb, notes


@torch.inference_mode()
def time_onnx(
    session, path: Path, model: nn.Module, sta: STAConfig, x: torch.Tensor, batch: int, runs: int | None, say: Log
) -> dict:
    """Time an ONNX file with ONNX Runtime and tell which model it holds: its logits are compared
    with the unpruned and the pruned torch model's on the same input."""
    name, feed, notes = onnx_input(session, x, batch)
    for n in notes:
        say(n)
    out = torch.from_numpy(session.run(None, {name: feed})[0]).float()
    diffs = {}
    for label, cfg in (("unpruned", STAConfig()), ("pruned", sta)):
        model.set_sta(cfg)
        ref = model(torch.from_numpy(feed).to(x.device)).float().cpu()
        diffs[label] = float((out - ref).abs().max()) if out.shape == ref.shape else float("inf")
    best = min(diffs, key=diffs.get)
    matches = best if diffs[best] < 1e-3 else None
    if matches is None:
        say(
            f"{path.name} matches neither model here (max abs logit diff {diffs[best]:.3g}): exported with other settings?"
        )
    timing = timing_summary(
        time_runs(lambda: session.run(None, {name: feed}), torch.device("cpu"), runs), feed.shape[0]
    )
    return {
        "file": str(path),
        "matches": matches,
        "max_abs_diff": {k: round(v, 7) for k, v in diffs.items()},
        "timing": timing,
    }


@torch.inference_mode()
def time_int8(
    path: Path, model: nn.Module, sta: STAConfig, x: torch.Tensor, batch: int, runs: int | None, threads: int | None
) -> dict:
    """Time the int8 graph `sta export --quantize int8` wrote beside model.onnx; its logits' cosine
    with the float32 pruned torch model says how close the quantised model stays."""
    session = onnx_session(path, threads)
    name, feed, _ = onnx_input(session, x, batch)
    out = torch.from_numpy(session.run(None, {name: feed})[0]).float()
    model.set_sta(sta)
    ref = model(torch.from_numpy(feed).to(x.device)).float().cpu()
    cosine = (
        torch.nn.functional.cosine_similarity(out, ref, dim=-1).min().item() if out.shape == ref.shape else float("nan")
    )
    timing = timing_summary(
        time_runs(lambda: session.run(None, {name: feed}), torch.device("cpu"), runs), feed.shape[0]
    )
    return {"file": str(path), "logit_cosine_vs_pruned": round(cosine, 6), "timing": timing}


def time_unpruned_onnx(
    model: nn.Module, pruned_path: Path, x: torch.Tensor, batch: int, runs: int | None, threads: int | None, say: Log
) -> dict | None:
    """Time `model` unpruned in ONNX Runtime (same opset as the pruned graph). Its export is kept beside
    the artifact, keyed by the weights' checksum, and reused by the next profile."""
    try:
        import onnx

        opset = next(
            (
                o.version
                for o in onnx.load(str(pruned_path), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx")
            ),
            18,
        )
    except ImportError as e:
        say(f"cannot export the unpruned model for ONNX Runtime ({e}); its column stays empty")
        return None
    model.set_sta(STAConfig())
    cached = unpruned_cache_path(pruned_path, opset)
    if cached is not None and cached.is_file():
        verify(cached.parent, [cached.name, cached.name + ".data"])
        say(f"reusing the unpruned export {cached} (made for these weights by an earlier sta profile)")
        return _time_unpruned(cached, x, batch, runs, threads, reused=True)
    cpu_model = model if x.device.type == "cpu" else copy.deepcopy(model).cpu()
    try:
        path = _export_unpruned(cpu_model, opset, cached)
    except StaError as e:
        say(f"the unpruned model did not export to ONNX ({e}); its ONNX Runtime column stays empty")
        return None
    if cached is not None:
        say(f"kept the unpruned export as {cached} for the next profile")
        return _time_unpruned(cached, x, batch, runs, threads, reused=False)
    try:
        return _time_unpruned(path, x, batch, runs, threads, reused=False)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def unpruned_cache_path(pruned_path: Path, opset: int) -> Path | None:
    """Where the unpruned export of an artifact's weights lives: beside them, named by their sha256."""
    folder = Path(pruned_path).parent
    weights = ((manifest(folder) or {}).get("files") or {}).get("model.safetensors")
    if sta_kind(folder) is None or weights is None:
        return None
    return folder / f"unpruned-{weights['sha256'][:16]}-opset{opset}.onnx"


def _export_unpruned(model: nn.Module, opset: int, cached: Path | None) -> Path:
    """Export into the artifact (published with its checksum in the manifest), or a temporary folder."""
    import tempfile

    from .export.onnx import export_onnx

    if cached is None:
        path = Path(tempfile.mkdtemp(prefix="sta-profile-")) / "unpruned.onnx"
        export_onnx(model, path, opset=opset, batch=None, metadata={})
        return path
    names = [cached.name, cached.name + ".data"]

    def records(tmp: Path) -> None:
        kept = (manifest(cached.parent) or {}).get("files", {})
        write_manifest(tmp, sta_kind(cached.parent), names, {k: v for k, v in kept.items() if k not in names})

    with outputs.files_into(cached.parent, names, [MANIFEST], finalize=records) as tmp:
        export_onnx(model, tmp / cached.name, opset=opset, batch=None, metadata={})
    return cached


def _time_unpruned(
    path: Path, x: torch.Tensor, batch: int, runs: int | None, threads: int | None, reused: bool
) -> dict:
    session = onnx_session(path, threads)
    name, feed, _ = onnx_input(session, x, batch)
    timing = timing_summary(
        time_runs(lambda: session.run(None, {name: feed}), torch.device("cpu"), runs), feed.shape[0]
    )
    timing["exported_for_comparison"] = True
    timing["export_reused"] = reused
    return timing


# --- the profile ---------------------------------------------------------------------------------


def _time_compiled(
    net: nn.Module, configs: dict[str, STAConfig], xb: torch.Tensor, runs: int | None, side: dict, log: Log
) -> dict:
    """side[name]["torch_compiled"]: latency of `net` compiled (torch.compile, fullgraph) per setting, and the
    seconds its first call took (compilation). Timed after eager, interleaved across the settings like eager."""
    from .compiled import compile_model, warm_up

    log("compiling with torch.compile (fullgraph; the first call per setting compiles)")
    compiled = compile_model(net)
    seconds = warm_up(compiled, xb, configs)
    log(f"timing torch compiled on {xb.device} (batch {xb.shape[0]})")
    timings = time_torch(compiled, configs, xb, runs, scoring=False)
    for name in configs:
        side[name]["torch_compiled"] = {**timings[name], "compile_seconds": round(seconds[name], 3)}
    return side


def _batched(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


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
) -> list[dict]:
    """Per r1: agreement with the unpruned logits `ref` over the clip's views for STA and for random
    pruning (mean over RANDOM_SEEDS), GFLOPs and torch-eager throughput."""
    rows = []
    xb = x[torch.arange(batch) % x.shape[0]]
    for r1 in values:
        log(f"sweep: r1={r1}")
        model.set_sta(sta_config(sta, r1))
        stats = compare(ref, _batched(model, x, batch))
        row = {"r1": r1, "tokens_per_stage": model.tokens_per_stage, "gflops": round(gflops(model), 4), "sta": stats}
        row["throughput"] = time_torch(model, {"sta": sta_config(sta, r1)}, xb, runs)["sta"]["throughput_clips_per_s"]
        randoms = []
        for seed in RANDOM_SEEDS:
            model.set_sta(STAConfig.random_baseline(r1, seed) if r1 else STAConfig())
            randoms.append(compare(ref, _batched(model, x, batch)))
        row["random"] = {k: round(float(np.mean([r[k] for r in randoms])), 5) for k in randoms[0]}
        row["random"]["seeds"] = len(RANDOM_SEEDS)
        row["sta"] = {k: round(v, 5) for k, v in stats.items()}
        rows.append(row)
    return rows


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
    device: str = "cpu",
    revision: str | None = None,
    token: str | bool | None = None,
    arch=None,  # models.ArchOverrides: explicit input size, heads, normalisation
    log: Log = quiet,
    note: Log | None = None,
    compile: bool = False,
    **sta_options,
) -> dict:
    """Profile `model` (alias, Hub id, folder, weights file or sta artifact) on the video `clip`.

    No model: the packaged demo model. No clip: the demo's sample clip, else a synthetic clip.
    r1 None: an artifact's own r1, or `runtime.loading.paper_r1` (the paper's 64 of 196, scaled) for a plain model.
    threads: CPU threads for torch and ONNX Runtime (default: torch's default). On a busy machine
    fewer threads give steadier numbers: small parallel ops, like STA's scoring, wait for every
    thread of the pool and suffer most when one is descheduled.
    compile: also time the model compiled with torch.compile (sta_cli.compiled), reporting the
    compile time per setting.
    Returns the report (see README); `note` receives the choices made on the user's behalf.
    """
    if threads is not None and threads < 1:
        raise StaError(f"--threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _profile(
            clip,
            model,
            r1,
            onnx,
            batch,
            views,
            vis,
            sweep_r1,
            sweep_png,
            runs,
            threads,
            device,
            revision,
            token,
            log,
            note,
            sta_options,
            arch=arch,
            compile=compile,
        )
    finally:
        torch.set_num_threads(before)


def _profile(
    clip,
    model,
    r1,
    onnx,
    batch,
    views,
    vis,
    sweep_r1,
    sweep_png,
    runs,
    threads,
    device,
    revision,
    token,
    log,
    note,
    sta_options,
    arch=None,
    compile=False,
) -> dict:
    note = note or log
    notes: list[str] = []

    def say(msg: str) -> None:
        notes.append(msg)
        note(msg)

    if batch < 1:
        raise StaError(f"--batch must be at least 1, got {batch}")
    if runs is not None and runs < 1:
        raise StaError(f"--runs must be at least 1, got {runs}")
    n_views = parse_views(views)
    sweep_values = parse_sweep(sweep_r1)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StaError("--device cuda: no CUDA device is available")

    if model is None:
        model = demo_model()
        if model is None:
            raise StaError("no model given and no artifact in the current folder: pass --model (see `sta models`)")
        say(f"no model given: using the packaged demo model ({model})")
    if clip is None:
        clip = demo_clip()
        say(f"no clip given: using the demo's sample clip {clip}" if clip else "no clip given: using a synthetic clip")
    from .vis import check_target

    if vis is not None:
        check_target(Path(vis))
    sweep_png = (
        Path(sweep_png)
        if sweep_png
        else (Path(vis).with_name(Path(vis).stem + "-sweep.png") if vis else Path("sweep.png"))
    )
    if sweep_values:
        check_target(sweep_png)

    log(f"loading {model}")
    source = resolve(str(model), revision=revision, token=token, arch=arch)
    net = build_from_source(source, STAConfig()).to(dev)
    base = STAConfig.from_dict(source.sta) if source.is_artifact else None
    sta = task_sta(base, net, r1, **sta_options)
    if r1 is None:
        say(
            f"r1={sta.r1}: the artifact's own setting"
            if base is not None
            else f"r1={sta.r1} (the paper's 64 of 196 tokens per frame, scaled to this model; choose with --r1)"
        )
    net.set_sta(sta)  # validates r1 (and any sweep value, below) before the heavy work
    if compile:
        from .compiled import check_compilable

        check_compilable(sta)
    for v in sweep_values or []:
        net.set_sta(sta_config(sta, v))
    net.set_sta(STAConfig())
    onnx_path = Path(onnx) if onnx is not None else None
    if onnx_path is None and source.is_artifact and (source.weights[0].parent / "model.onnx").is_file():
        onnx_path = source.weights[0].parent / "model.onnx"
        say(f"timing the artifact's exported {onnx_path} with ONNX Runtime too")
    elif onnx_path is not None and onnx_path.is_dir():
        raise StaError(f"--onnx {onnx_path} is a folder; give the .onnx file")
    if onnx_path is not None and sta_kind(onnx_path.parent) is not None:
        verify(onnx_path.parent, [onnx_path.name, onnx_path.name + ".data"])
    session = onnx_session(onnx_path, threads) if onnx_path is not None else None

    # The clip, sampled and preprocessed as the model was evaluated.
    pre = net.preprocessing
    clip_warnings: list[str] = []
    if clip is not None:
        log(f"decoding {clip}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", VideoWarning)
            decoded = read_clip(Path(clip), pre, n_views)
        for w in caught:
            if issubclass(w.category, VideoWarning):
                clip_warnings.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        x = decoded.views
        clip_info = {"path": str(clip), **decoded.info.to_dict(), "indices": decoded.indices}
    else:
        if n_views != (1, 1):
            say("--views applies to video files; the synthetic clip has one view")
            n_views = (1, 1)
        x = synthetic_clip(pre)
        clip_info = {"path": None, "synthetic": True}
    clip_info.update(
        views=f"{n_views[0]}x{n_views[1]}",
        num_frames=pre["num_frames"],
        frame_stride=pre["frame_stride"],
        crop_size=pre["crop_size"],
    )
    x = x.to(dev)

    # Predictions: every view through both models; per-view softmax averaged (VideoMAE's protocol).
    log("predicting")
    ref = _batched(net, x, batch)
    net.set_sta(sta)
    pruned = _batched(net, x, batch)
    check_finite(net, {"unpruned": ref, "pruned": pruned}, clip_info["path"] or "the synthetic clip")
    side = {}
    for name, logits in (("unpruned", ref), ("pruned", pruned)):
        side[name] = {"top5": top_labels(net, logits.float().softmax(-1).mean(0))}
    agreement = {k: round(v, 5) for k, v in compare(ref, pruned).items()}
    agreement["same_top1_after_averaging"] = side["unpruned"]["top5"][0]["index"] == side["pruned"]["top5"][0]["index"]

    log("counting parameters and FLOPs")
    params = count_params(net)
    for name, cfg in (("unpruned", STAConfig()), ("pruned", sta)):
        net.set_sta(cfg)
        side[name].update(params=params, gflops=round(gflops(net), 4), tokens_per_stage=net.tokens_per_stage)

    # Latency: the same batch of clips for both; the pruned runs also time STA's scoring.
    xb = x[torch.arange(batch) % x.shape[0]]
    log(f"timing torch eager on {dev} (batch {batch})")
    timings = time_torch(net, {"unpruned": STAConfig(), "pruned": sta}, xb, runs)
    for name in side:
        side[name]["torch"] = timings[name]
        side[name]["torch_compiled"] = None
    if compile:
        side = _time_compiled(net, {"unpruned": STAConfig(), "pruned": sta}, xb, runs, side, log)
    net.set_sta(sta)

    onnx_report = None
    if session is not None:
        log(f"timing ONNX Runtime ({onnx_path.name})")
        onnx_report = time_onnx(session, onnx_path, net, sta, x, batch, runs, say)
        session = None  # its weights are freed before the unpruned model is exported and loaded
        if onnx_report["matches"] is not None:
            side[onnx_report["matches"]]["onnxruntime"] = onnx_report["timing"]
        if onnx_report["matches"] == "pruned" and sta.enabled:
            # The other column: export the unpruned model (a plain ViT graph, quick to export) and time it alike.
            log("exporting the unpruned model to ONNX for the comparison")
            side["unpruned"]["onnxruntime"] = time_unpruned_onnx(net, onnx_path, x, batch, runs, threads, say)
            net.set_sta(sta)
    for s in side.values():
        s.setdefault("onnxruntime", None)
    int8_path = onnx_path.parent / "model.int8.onnx" if onnx_path is not None else None
    int8_report = None
    if int8_path is not None and int8_path.is_file() and sta.enabled:
        log(f"timing ONNX Runtime int8 ({int8_path.name})")
        int8_report = time_int8(int8_path, net, sta, x, batch, runs, threads)
        side["pruned"]["onnxruntime_int8"] = int8_report["timing"]

    report = {
        "sta_version": __version__,
        "model": {"spec": str(model), "name": source.name, "family": net.family, "artifact": source.is_artifact},
        "clip": clip_info,
        "sta": sta.to_dict(),
        "device": {"type": dev.type, "torch_threads": torch.get_num_threads(), "batch": batch},
        "gflops_convention": FLOPS_LABEL,
        "unpruned": side["unpruned"],
        "pruned": side["pruned"],
        "agreement": agreement,
        "onnx": onnx_report,
        "onnx_int8": int8_report,
        "notes": notes,
        "warnings": clip_warnings,
        "vis": None,
        "sweep": None,
    }

    if vis is not None:
        log(f"drawing kept tokens to {vis}")
        centre = (n_views[0] // 2) * n_views[1] + n_views[1] // 2  # views are clip-major
        report["vis"] = str(draw_kept_tokens(net, x[centre : centre + 1], pre, Path(vis)))

    if sweep_values:
        rows = sweep(net, sta, sweep_values, x, ref, batch, runs, log)
        from .vis import save_sweep_plot

        title = f"{source.name} on {Path(clip).name if clip else 'a synthetic clip'}: STA vs random pruning"
        report["sweep"] = {"rows": rows, "png": str(save_sweep_plot(sweep_png, rows, title))}
    net.set_sta(sta)
    return report


@torch.inference_mode()
def draw_kept_tokens(model: nn.Module, view: torch.Tensor, pre: dict, path: Path) -> Path:
    """Fig. 4: one view's frames (1, C, T, H, W), one row per STA stage with its dropped tokens whitened."""
    from .vis import save_kept_tokens

    _, kept = model.forward_with_positions(view)
    grids = model.kept_grids
    frames = denormalise(view[0], pre)
    labels = [f"input: {view.shape[2]} frames"]
    labels += [f"STA step {i + 1}: {k.shape[1]}/{math.prod(g)} kept" for i, (k, g) in enumerate(zip(kept, grids))]
    return save_kept_tokens(path, frames, [k[0].cpu().numpy() for k in kept], grids, labels)
