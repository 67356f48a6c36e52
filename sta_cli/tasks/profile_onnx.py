"""`sta profile`'s ONNX Runtime side: timing an exported model, telling which model it holds, and
exporting the unpruned model to compare with (cached beside the artifact's weights)."""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import StaError
from ..io import outputs
from ..io.artifact import MANIFEST, manifest, sta_kind, verify_graph, write_manifest
from ..log import Log
from ..pruning import STAConfig
from ..runtime import ort
from ..runtime.measure import OnnxTiming, Timing, time_runs

CPU = torch.device("cpu")


@dataclass
class OnnxReport:
    """An exported model timed with ONNX Runtime, and which of the two torch models it matches."""

    file: str
    matches: str | None  # "unpruned", "pruned", or None: neither (exported with other settings?)
    max_abs_diff: dict[str, float]  # logits vs each torch model
    timing: Timing


@dataclass
class Int8Report:
    file: str
    logit_cosine_vs_pruned: float  # the lowest over the batch
    timing: Timing


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
) -> OnnxReport:
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
    timing = Timing.of(time_runs(lambda: session.run(None, {name: feed}), CPU, runs), feed.shape[0])
    return OnnxReport(str(path), matches, {k: round(v, 7) for k, v in diffs.items()}, timing)


@torch.inference_mode()
def time_int8(
    path: Path,
    model: nn.Module,
    sta: STAConfig,
    x: torch.Tensor,
    batch: int,
    runs: int | None,
    threads: int | None,
    say: Log,
) -> Int8Report | None:
    """Time the int8 graph `sta export --quantize int8` wrote beside model.onnx; its logits' cosine
    with the float32 pruned torch model says how close the quantised model stays. None (and a
    line) when it keeps other token counts than the pruned model: it holds other settings."""
    session = onnx_session(path, threads)
    name, feed, _ = onnx_input(session, x, batch)
    outs = session.run(None, {name: feed})
    out = torch.from_numpy(outs[0]).float()
    model.set_sta(sta)
    ref = model(torch.from_numpy(feed).to(x.device)).float().cpu()
    if [o.shape for o in outs[1:]] != [tuple(k.shape) for k in model.kept_positions]:
        say(f"{path.name} keeps other token counts than r1={sta.r1} here: exported with other settings? not timed")
        return None
    cosine = (
        torch.nn.functional.cosine_similarity(out, ref, dim=-1).min().item() if out.shape == ref.shape else float("nan")
    )
    timing = Timing.of(time_runs(lambda: session.run(None, {name: feed}), CPU, runs), feed.shape[0])
    return Int8Report(str(path), round(cosine, 6), timing)


def time_unpruned_onnx(
    model: nn.Module, pruned_path: Path, x: torch.Tensor, batch: int, runs: int | None, threads: int | None, say: Log
) -> OnnxTiming | None:
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
    if cached is not None and os.path.lexists(cached):
        return _reuse_unpruned(cached, x, batch, runs, threads, say)
    cpu_model = model if x.device.type == "cpu" else copy.deepcopy(model).cpu()
    try:
        path = _export_unpruned(cpu_model, opset, cached)
    except StaError as e:
        if cached is not None and os.path.lexists(cached):  # another sta profile published it meanwhile
            return _reuse_unpruned(cached, x, batch, runs, threads, say)
        say(f"the unpruned model did not export to ONNX ({e}); its ONNX Runtime column stays empty")
        return None
    if cached is not None:
        say(f"kept the unpruned export as {cached} for the next profile")
        return _time_unpruned(cached, x, batch, runs, threads, reused=False)
    try:
        return _time_unpruned(path, x, batch, runs, threads, reused=False)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def _reuse_unpruned(cached: Path, x, batch: int, runs: int | None, threads: int | None, say: Log) -> OnnxTiming | None:
    try:
        verify_graph(cached)
    except StaError as e:
        say(f"{e}; the unpruned ONNX Runtime column stays empty")
        return None
    say(f"reusing the unpruned export {cached} (made for these weights by an earlier sta profile)")
    return _time_unpruned(cached, x, batch, runs, threads, reused=True)


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

    from ..formats.onnx import export_onnx

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
) -> OnnxTiming:
    session = onnx_session(path, threads)
    name, feed, _ = onnx_input(session, x, batch)
    times = time_runs(lambda: session.run(None, {name: feed}), CPU, runs)
    return OnnxTiming(**vars(Timing.of(times, feed.shape[0])), exported_for_comparison=True, export_reused=reused)
