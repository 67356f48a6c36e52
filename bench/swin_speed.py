"""Latency of STA-pruned Video Swin-T/B (32x224^2): ONNX Runtime (CPU) and torch eager vs the FLOP ratio.

For r1 in {0, 192, 256, 320} (paper Table 3): export random-weight Swin with
`sta_cli.formats.onnx.export_onnx` (the code `sta export` runs; dynamic batch, opset 18, and with
`--opsets 18 23` a second graph per r1 whose attention is ONNX's fused `Attention` op), check that
ONNX Runtime reproduces PyTorch on the timing clip (same kept positions, logits diff) and the file
size against the weights, then time one clip (batch 1) with a fixed thread count, interleaved across
r1 values and paths (one run of each per round, median over rounds; `common.interleaved`).
ONNX Runtime's idle threads do not spin (`session.intra_op.allow_spinning = 0`): spinning threads
would steal the CPU from the next run. The speedup over r1 = 0 sits next to the ideal, the FLOP
ratio (fvcore convention, `sta_cli.flops.gflops`), and its share of it.

    python bench/swin_speed.py --size T --rounds 5 --threads 2 --json swin-t.json
    python bench/swin_speed.py --size B --paths torch --rounds 3   # eager only (no exports)
    python bench/swin_speed.py --size T --threads 1 --cpu-time --rounds 7   # on a busy machine
    python bench/swin_speed.py --size T --opsets 18 23 --r1s 0 256 --paths ort   # opset 18 vs fused Attention

--cpu-time measures CPU time instead of wall-clock time (needs --threads 1: with more threads,
CPU time counts OpenMP's spin-waits): `time.thread_time` for torch, `time.process_time` for ONNX
Runtime (its one intra-op thread is the caller's). A machine shared with other jobs deschedules
threads at random, which wall-clock ratios absorb and CPU time does not. Every path runs twice
before timing: ONNX Runtime's second run of a large graph still grows its arena (page faults,
about 1 s of system time for Swin-T).

Random weights: latency does not depend on the values (every shape is fixed by r1).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, header, interleaved, log, parser, session  # noqa: E402

from sta_cli.flops import gflops  # noqa: E402
from sta_cli.formats.graph import ExportModule  # noqa: E402
from sta_cli.formats.onnx import export_onnx  # noqa: E402
from sta_cli.models.videoswin import VideoSwin, VideoSwinConfig  # noqa: E402
from sta_cli.pruning import STAConfig  # noqa: E402

SIZES = {
    "T": VideoSwinConfig(),  # Swin-T: 96 wide, depths (2, 2, 6, 2), window (8, 7, 7), 32x224^2
    "B": VideoSwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),  # Swin-B
    # smoke test only: same structure, tiny widths and input
    "tiny": VideoSwinConfig(
        embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_frames=8, image_size=112, num_classes=10
    ),
}
R1S = {"T": (0, 192, 256, 320), "B": (0, 192, 256, 320), "tiny": (0, 24, 32, 40)}


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


def export_checked(model: VideoSwin, x: torch.Tensor, path: Path, threads: int, opset: int = 18):
    """Export, then check ONNX Runtime against PyTorch on x. -> (session, check dict)."""
    t0 = time.perf_counter()
    export_onnx(model, path, opset=opset, batch=None, metadata={})
    seconds = time.perf_counter() - t0
    sess = session(path, threads)
    ours, ref = sess.run(None, {"pixel_values": x.numpy()}), eager_outputs(model, x)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return sess, {
        "export_s": round(seconds, 1),
        "kept_positions_identical": all(torch.equal(torch.from_numpy(o), r) for o, r in zip(ours[1:], ref[1:])),
        "logits_max_abs_diff": (torch.from_numpy(ours[0]) - ref[0]).abs().max().item(),
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "file_over_weights": round(path.stat().st_size / weights, 3),
    }


def ort_path(opset: int) -> str:
    return "ort" if opset == 18 else f"ort_opset{opset}"


def bench(
    size: str,
    paths: list[str],
    rounds: int,
    threads: int,
    workdir: Path,
    cpu_time: bool = False,
    opsets: tuple[int, ...] = (18,),
    r1s: tuple[int, ...] | None = None,
) -> dict:
    cfg, r1s = SIZES[size], r1s or R1S[size]
    x = torch.randn(
        1, cfg.in_chans, cfg.num_frames, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1)
    )
    feed = {"pixel_values": x.numpy()}
    runs, flops, checks = {}, {}, {}
    for r1 in r1s:
        model = random_model(cfg)
        model.set_sta(STAConfig(r1=r1))
        flops[r1], checks[r1] = gflops(model), {}
        for opset in opsets if "ort" in paths else ():
            name = f"swin-{size}-r{r1}" + ("" if opset == 18 else f"-opset{opset}") + ".onnx"
            sess, check = export_checked(model, x, workdir / name, threads, opset)
            runs[(ort_path(opset), r1)] = lambda s=sess: s.run(None, feed)
            checks[r1] |= {k if opset == 18 else f"{k}_opset{opset}": v for k, v in check.items()}
            log(f"Swin-{size} r1={r1} opset {opset}: {flops[r1]:.2f} GFLOPs, {check}")
        if "torch" in paths:
            runs[("torch", r1)] = lambda m=model: run_eager(m, x)
    paths = [ort_path(o) for o in opsets if "ort" in paths] + [p for p in paths if p != "ort"]
    log(f"Swin-{size}: {', '.join(paths)} interleaved, {rounds} rounds")
    # CPU time: torch runs on the calling thread; ONNX Runtime's one intra-op thread is the caller's too.
    cpu_clock = lambda key: time.thread_time if key[0] == "torch" else time.process_time  # noqa: E731
    times = interleaved(runs, rounds, warmup=2, clock=cpu_clock if cpu_time else None)
    rows = []
    for r1 in r1s:
        row = {"r1": r1, "gflops": round(flops[r1], 2), "flop_ratio": round(flops[r1s[0]] / flops[r1], 3)}
        for path in paths:
            speedup = times[(path, r1s[0])] / times[(path, r1)]
            row |= {
                f"{path}_ms": round(1000 * times[(path, r1)], 1),
                f"{path}_speedup": round(speedup, 3),
                f"{path}_share": round(speedup / row["flop_ratio"], 3),
            }
        rows.append(row | checks[r1])
        log("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    clock = "cpu time" if cpu_time else "wall clock"
    return {"size": size, "threads": threads, "rounds": rounds, "batch": 1, "clock": clock, "rows": rows}


def run_eager(model: VideoSwin, x: torch.Tensor) -> None:
    with torch.inference_mode():
        model(x)


def main() -> None:
    p = parser(__doc__, rounds=3)
    p.add_argument("--size", default="T", choices=list(SIZES))
    p.add_argument("--paths", nargs="+", default=["ort", "torch"], choices=["ort", "torch"])
    p.add_argument("--cpu-time", action="store_true", help="Time CPU time instead of wall clock (needs --threads 1).")
    p.add_argument("--keep", type=Path, default=None, help="Keep the exported .onnx files in this folder.")
    p.add_argument(
        "--opsets", nargs="+", type=int, default=[18], help="ONNX opsets to export and time (23: fused Attention)."
    )
    p.add_argument(
        "--r1s", nargs="+", type=int, default=None, help="r1 values (the first is the baseline; default 0 192 256 320)."
    )
    args = p.parse_args()
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time needs --threads 1 (with more threads CPU time counts OpenMP's spin-waits)")
    torch.set_num_threads(args.threads)
    results = header("swin_speed.py")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results["result"] = bench(
            args.size, args.paths, args.rounds, args.threads, workdir, args.cpu_time, tuple(args.opsets), args.r1s
        )
    emit(results, args.json)


if __name__ == "__main__":
    main()
