"""What the benchmarks share: options, ONNX Runtime sessions, interleaved timing and the results file.

Every script prints progress on stderr and its results as JSON on stdout (and to `--json FILE`),
headed by the command, library versions, core count and the load average before and after the
run (a loaded machine is the first suspect when two runs disagree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: --rounds, --threads, --json."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--rounds", type=int, default=rounds, help="Timed rounds (the median is reported).")
    p.add_argument("--threads", type=int, default=2, help="Intra-op threads of torch and ONNX Runtime.")
    p.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    return p


def header(script: str, **facts) -> dict:
    """The head of a results file: how the run was made, then `facts`."""
    import onnxruntime

    return {
        "command": f"python bench/{script} " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        **facts,
    }


def emit(results: dict, path: Path | None) -> None:
    """Print the results as JSON (and write them to `path`), with the load average at the end."""
    results["load_average_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")


def session(path: Path, threads: int, profile: bool = False):
    """An ONNX Runtime CPU session as `sta profile` makes it (idle threads do not spin)."""
    from sta_cli.runtime import ort

    return ort.session(path, "cpu", threads, profile_prefix=str(path.with_suffix("")) if profile else None)[0]


def interleaved(
    runs: dict, rounds: int, warmup: int = 1, clock: Callable[[object], Callable[[], float]] | None = None
) -> dict:
    """Median seconds per run, one call of every run per round, so that slow drifts of the machine
    hit every run alike. clock(key) -> the clock for that run (default: wall clock)."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            now = clock(key) if clock else time.perf_counter
            start = now()
            fn()
            times[key].append(now() - start)
    return {k: statistics.median(v) for k, v in times.items()}
