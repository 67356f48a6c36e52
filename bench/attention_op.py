"""ONNX Runtime with attention decomposed (opset 18) vs ONNX's fused `Attention` op (opset 23), ViT.

`sta export` defaults to opset 18: attention becomes MatMul, Softmax and MatMul over a materialised
(batch, heads, tokens, tokens) score tensor. From opset 23 the exporter maps
`scaled_dot_product_attention` to one `Attention` node (ONNX Runtime >= 1.23, TensorRT >= 10.14).
For each ViT size and batch: export unpruned and pruned (the paper's r1 = 64) at both opsets with
`export_onnx` (what `sta export --opset N` runs), check every graph against PyTorch on the timing
clip (same kept positions, logits diff), then time the four graphs interleaved (one run of each per
round, median), idle-thread spinning off. Video Swin: `bench/swin_speed.py --opsets 18 23`.

    python bench/attention_op.py --rows S1 S8 B1 --rounds 5 --threads 2 --json attention.json

Random weights: latency does not depend on the values (every shape is fixed by r1).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, header, interleaved, log, parser  # noqa: E402
from export_speed import SIZES, random_model  # noqa: E402
from table import ort_runner  # noqa: E402

from sta_cli.flops import gflops  # noqa: E402
from sta_cli.formats.graph import ExportModule  # noqa: E402
from sta_cli.formats.onnx import export_onnx  # noqa: E402
from sta_cli.pruning import STAConfig  # noqa: E402

OPSETS = (18, 23)
SIDES = {"unpruned": STAConfig(), "pruned": STAConfig(r1=64)}


def checked_export(model, sta: STAConfig, x: torch.Tensor, path: Path, opset: int, threads: int):
    """Export at `opset`, check ONNX Runtime against PyTorch on x. -> (runner, check dict)."""
    model.set_sta(sta)
    t0 = time.perf_counter()
    export_onnx(model, path, opset=opset, batch=None, metadata={})
    seconds = time.perf_counter() - t0
    run = ort_runner(path, x, threads)
    ours = run()
    with torch.inference_mode():
        ref = list(ExportModule(model)(x))
    kept_same = all(torch.equal(torch.from_numpy(o), r) for o, r in zip(ours[1:], ref[1:]))
    diff = (torch.from_numpy(ours[0]) - ref[0]).abs().max().item()
    return run, {"export_s": round(seconds, 1), "kept_positions_identical": kept_same, "logits_max_abs_diff": diff}


def bench_row(size: str, batch: int, rounds: int, threads: int, workdir: Path) -> dict:
    model = random_model(SIZES[size])
    x = torch.randn(batch, 3, model.cfg.num_frames, model.cfg.image_size, model.cfg.image_size)
    runs, checks, flops = {}, {}, {}
    for side, sta in SIDES.items():
        model.set_sta(sta)
        flops[side] = gflops(model)
        for opset in OPSETS:
            path = workdir / f"{size}{batch}-{side}-opset{opset}.onnx"
            runs[(opset, side)], checks[f"{side} opset {opset}"] = checked_export(model, sta, x, path, opset, threads)
            log(f"ViT-{size} batch {batch} {side} opset {opset}: {checks[f'{side} opset {opset}']}")
    log(f"ViT-{size} batch {batch}: {len(runs)} graphs interleaved, {rounds} rounds")
    med = interleaved({k: (lambda r=r: r()) for k, r in runs.items()}, rounds)
    ratio = flops["unpruned"] / flops["pruned"]
    row = {"arch": f"ViT-{size}", "batch": batch, "flop_ratio": round(ratio, 3), "checks": checks, "opsets": {}}
    for opset in OPSETS:
        u, p = med[(opset, "unpruned")], med[(opset, "pruned")]
        row["opsets"][opset] = {
            "unpruned_ms": round(1000 * u, 2),
            "pruned_ms": round(1000 * p, 2),
            "speedup": round(u / p, 3),
            "share": round(u / p / ratio, 3),
        }
    log(json.dumps(row))
    return row


def main() -> None:
    p = parser(__doc__, rounds=5)
    p.add_argument("--rows", nargs="+", default=["S1", "S8", "B1"], help="SIZE+BATCH: S, B (T: smoke test)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = header("attention_op.py", threads=args.threads, rounds=args.rounds, rows=[])
    with tempfile.TemporaryDirectory(prefix="sta-attention-") as tmp:
        for spec in args.rows:
            results["rows"].append(bench_row(spec[0], int(spec[1:]), args.rounds, args.threads, Path(tmp)))
    emit(results, args.json)


if __name__ == "__main__":
    main()
