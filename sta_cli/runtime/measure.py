"""Timing: medians of interleaved runs, and STA's share of the time measured with forward hooks."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.layers import StaScoring
from ..pruning import STAConfig

WARMUP = 2  # untimed calls before timing (first-call allocations, thread pools, caches)


@dataclass
class Timing:
    """Median latency of `runs` timed calls on `batch` clips."""

    latency_ms: float
    throughput_clips_per_s: float
    runs: int
    batch: int

    @classmethod
    def of(cls, times: list[float], batch: int) -> Timing:
        median = statistics.median(times)
        return cls(round(1000 * median, 3), round(batch / median, 3), len(times), batch)


@dataclass
class TorchTiming(Timing):
    """Eager PyTorch; for a pruned model also the time spent in STA's scoring (None when not timed)."""

    sta_scoring_share: float | None = None
    sta_scoring_ms: float | None = None


@dataclass
class CompiledTiming(Timing):
    compile_seconds: float = 0.0  # the first call per setting, compilation included


@dataclass
class OnnxTiming(Timing):
    exported_for_comparison: bool = False  # the unpruned model, exported by `sta profile` itself
    export_reused: bool = False  # ... kept from an earlier profile


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def scoring_timer(model: nn.Module, device: torch.device):
    """Time STA's token scoring inside `model`'s forward. Yields a list that collects seconds per call.

    How: every backbone runs its scoring (similarity feature and token selection) through one
    `StaScoring` submodule; a forward pre-hook and a forward hook on it take the time around each
    call (with a device sync on GPU, where kernels run asynchronously). Eager CPU ops are
    synchronous, so the wall time around a call is the time the scoring takes. Gathering the kept
    tokens is not counted: it is how pruning is applied, not how tokens are scored.
    """
    scorers = [m for m in model.modules() if isinstance(m, StaScoring)]
    if not scorers:
        raise RuntimeError(f"{type(model).__name__} has no StaScoring module to time")
    spent: list[float] = []
    started: list[float] = []

    def before(module, args):
        sync(device)
        started.append(time.perf_counter())

    def after(module, args, output):
        sync(device)
        spent.append(time.perf_counter() - started.pop())

    handles = [m.register_forward_pre_hook(before) for m in scorers]
    handles += [m.register_forward_hook(after) for m in scorers]
    try:
        yield spent
    finally:
        for h in handles:
            h.remove()


def time_runs(
    fn: Callable[[], object], device: torch.device, runs: int | None, warmup: int = WARMUP, budget: float = 4.0
) -> list[float]:
    """Seconds per call after `warmup` calls; `runs` calls, or as many as fit `budget` (3..20)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    per_call = (time.perf_counter() - t0) / warmup
    n = runs or int(min(20, max(3, budget / max(per_call, 1e-6))))
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


@torch.inference_mode()
def time_torch(
    model: nn.Module,
    configs: dict[str, STAConfig],
    x: torch.Tensor,
    runs: int | None,
    budget: float = 4.0,
    scoring: bool = True,
) -> dict[str, TorchTiming]:
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
            sync(device)
            t0 = time.perf_counter()
            model(x)
            sync(device)
            return time.perf_counter() - t0, sum(spent)

        per_call = 0.0
        for cfg in configs.values():
            for _ in range(WARMUP):
                t, _ = call(cfg)
            per_call += t
        n = runs or int(min(20, max(3, budget / max(per_call, 1e-6))))
        times = {name: [] for name in configs}
        scored = {name: [] for name in configs}
        for _ in range(n):
            for name, cfg in configs.items():
                t, s = call(cfg)
                times[name].append(t)
                scored[name].append(s)
    return {name: _torch_timing(times[name], scored[name] if scoring else None, x.shape[0]) for name in configs}


def _torch_timing(times: list[float], scored: list[float] | None, batch: int) -> TorchTiming:
    base = Timing.of(times, batch)
    if scored is None:
        return TorchTiming(**vars(base))
    share = round(statistics.median(s / t for s, t in zip(scored, times)), 4)
    return TorchTiming(**vars(base), sta_scoring_share=share, sta_scoring_ms=round(1000 * statistics.median(scored), 3))
