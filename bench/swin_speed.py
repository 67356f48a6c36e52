"""Latency of STA-pruned Video Swin-T (32x224^2): ONNX Runtime (CPU) and torch eager vs the FLOP ratio.

For r1 in {0, 192, 256, 320} (paper Table 3): export random-weight Swin-T with
`sta_cli.export.onnx.export_onnx` (the code `sta export` runs; dynamic batch, opset 18), check that
ONNX Runtime reproduces PyTorch on the timing clip (same kept positions, logits diff), then time one
clip (batch 1) with a fixed thread count, interleaved across r1 values (one run of each per round,
median over rounds; `export_speed.interleaved`). The speedup over r1 = 0 sits next to the ideal,
the FLOP ratio (fvcore convention, `sta_cli.flops.gflops`).

    python bench/swin_speed.py --rounds 3 --threads 2 --json swin.json

Random weights: latency does not depend on the values (every shape is fixed by r1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from export_speed import interleaved, session  # same timing and ORT session setup as the ViT bench

from sta_cli.export.graph import ExportModule
from sta_cli.export.onnx import export_onnx
from sta_cli.flops import gflops
from sta_cli.models.videoswin import VideoSwin, VideoSwinConfig
from sta_cli.pruning import STAConfig

SIZES = {
    "T": VideoSwinConfig(),  # Swin-T: 96 wide, depths (2, 2, 6, 2), window (8, 7, 7), 32x224^2
    # smoke test only: same structure, tiny widths and input
    "tiny": VideoSwinConfig(
        embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_frames=8, image_size=112, num_classes=10
    ),
}
R1S = {"T": (0, 192, 256, 320), "tiny": (0, 24, 32, 40)}


def random_model(cfg: VideoSwinConfig, seed: int = 0) -> VideoSwin:
    torch.manual_seed(seed)
    model = VideoSwin(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and "relative_position_bias_table" not in name:
                torch.nn.init.trunc_normal_(p, std=0.02)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    return model


@torch.inference_mode()
def eager_outputs(model: VideoSwin, x: torch.Tensor) -> list[torch.Tensor]:
    return list(ExportModule(model)(x))


def bench(size: str, rounds: int, threads: int, workdir: Path, log) -> dict:
    cfg = SIZES[size]
    x = torch.randn(
        1, cfg.in_chans, cfg.num_frames, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1)
    )
    feed = {"pixel_values": x.numpy()}
    models, sessions, flops, checks = {}, {}, {}, {}
    for r1 in R1S[size]:
        model = random_model(cfg)
        model.set_sta(STAConfig(r1=r1))
        models[r1] = model
        flops[r1] = gflops(model)
        path = workdir / f"swin-{size}-r{r1}.onnx"
        t0 = time.perf_counter()
        export_onnx(model, path, opset=18, batch=None, metadata={})
        seconds = time.perf_counter() - t0
        sessions[r1] = session(path, threads)
        ours, ref = sessions[r1].run(None, feed), eager_outputs(model, x)
        same = all(torch.equal(torch.from_numpy(o), r) for o, r in zip(ours[1:], ref[1:]))
        diff = (torch.from_numpy(ours[0]) - ref[0]).abs().max().item()
        checks[r1] = {"export_s": round(seconds, 1), "kept_positions_identical": same, "logits_max_abs_diff": diff}
        log(
            f"Swin-{size} r1={r1}: {flops[r1]:.2f} GFLOPs, exported in {seconds:.0f}s, "
            f"kept positions {'identical' if same else 'DIFFER'}, logits diff {diff:.2g}"
        )

    log(f"Swin-{size}: ONNX Runtime, {rounds} rounds")
    ort_t = interleaved({r1: (lambda s=sessions[r1]: s.run(None, feed)) for r1 in R1S[size]}, rounds)
    log(f"Swin-{size}: torch eager, {rounds} rounds")

    def run_eager(m):
        with torch.inference_mode():
            m(x)

    torch_t = interleaved({r1: (lambda m=models[r1]: run_eager(m)) for r1 in R1S[size]}, rounds)
    rows = []
    for r1 in R1S[size]:
        rows.append(
            {
                "r1": r1,
                "gflops": round(flops[r1], 2),
                "flop_ratio": round(flops[0] / flops[r1], 3),
                "ort_ms": round(1000 * ort_t[r1], 1),
                "ort_speedup": round(ort_t[0] / ort_t[r1], 3),
                "torch_ms": round(1000 * torch_t[r1], 1),
                "torch_speedup": round(torch_t[0] / torch_t[r1], 3),
                **checks[r1],
            }
        )
        row = rows[-1]
        log(
            f"  r1={r1:3d}  ORT {row['ort_ms']:8.1f} ms ({row['ort_speedup']:.2f}x)  torch {row['torch_ms']:8.1f} ms "
            f"({row['torch_speedup']:.2f}x)  FLOP ratio {row['flop_ratio']:.2f}x"
        )
    return {"size": size, "threads": threads, "rounds": rounds, "batch": 1, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="T", choices=list(SIZES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    import onnxruntime

    results = {
        "command": "python bench/swin_speed.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["result"] = bench(args.size, args.rounds, args.threads, Path(tmp), log)
    results["load_average_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
