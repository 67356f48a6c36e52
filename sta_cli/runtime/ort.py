"""ONNX Runtime sessions, built one way for export validation, profiling and benchmarks."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import StaError


def session(
    path: Path,
    device: str = "cpu",
    threads: int | None = None,
    profile_prefix: str | None = None,
    low_memory: bool = False,
):
    """(session, provider, note) for the ONNX file `path`.

    device auto | cpu | cuda: CUDA when onnxruntime-gpu is installed and a GPU is visible (auto,
    cuda), else the CPU with a note saying why. Idle threads do not spin after a run: spinning
    threads steal the CPU from whatever runs next (PyTorch, another session), which skews every
    side-by-side timing.

    low_memory (export validation, where PyTorch runs beside the session): no CPU memory arena, so
    a run's activations are freed when it returns instead of staying reserved while PyTorch runs,
    and no weight prepacking, so weights in an external data file are read from its mapping instead
    of being copied. Measured on ViT-L (1.2 GB of weights), session plus one batch-3 run: peak RSS
    2.52 GB by default, 1.76 GB low_memory (1.45 GB held after the run against 2.52), runs ~1.3x
    slower. Nor does it fold constants: folding would store every computed constant as a new
    weight, e.g. Video Swin's relative-position biases as one dense (heads, vol, vol) tensor per
    block, 406 MB for Swin-T's 113 MB of weights; unfolded, each run gathers them (the same values,
    the same kernels). Swin-T session: peak 1.01 -> 0.20 GB; after a batch-1 run 1.57 -> 0.93 GB.
    Timing sessions keep the defaults.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise StaError("ONNX Runtime is not installed: pip install 'sta-cli[export]' (or [gpu])") from None
    if not Path(path).is_file():
        raise StaError(f"no such ONNX file: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would clutter stderr
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if low_memory:
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    providers, note = _providers(ort, device)
    unfolded = {"disabled_optimizers": ["ConstantFolding"]} if low_memory else {}
    try:
        sess = ort.InferenceSession(str(path), options, providers=providers, **unfolded)
    except Exception as e:  # onnxruntime raises its own exception types, none of them exported stably
        raise StaError(f"cannot load {path} with ONNX Runtime {ort.__version__}: {load_error(str(e))}") from None
    used = sess.get_providers()[0]
    if providers[0] == "CUDAExecutionProvider" and used != "CUDAExecutionProvider":
        note = "no GPU visible to onnxruntime; using the CPU"
    return sess, used, note


def _providers(ort, device: str) -> tuple[list[str], str]:
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], ""
    note = (
        "onnxruntime has no CUDA provider (install the gpu extra: onnxruntime-gpu); using the CPU"
        if device == "cuda"
        else ""
    )
    return ["CPUExecutionProvider"], note


def load_error(message: str) -> str:
    """ONNX Runtime's load error in one line; for a graph newer than this ONNX Runtime, what to do."""
    newest = re.search(r"support for domain ai\.onnx is till opset (\d+)", message)
    if newest:
        n = newest.group(1)
        return f"the graph's opset is newer than it loads (up to {n}): export with --opset {n} or lower, or upgrade onnxruntime"
    return message.splitlines()[0]
