"""int8 ONNX (`sta export --quantize int8`) against float32: ViT-B 16x224^2, r1 = 0 and 64, ONNX Runtime CPU.

Exports the unpruned and the r1 = 64 model with `export_onnx` (what `sta export` runs), quantises
each with `sta_cli.formats.quantize.quantize_int8` (linear layers only, STA scores float32), and
times the four graphs interleaved (one run of each per round, median over rounds) at a fixed thread
count with ONNX Runtime's idle-thread spinning off. Target (issue 12): int8 r1=64 at least 3x
faster than float32 unpruned. Also reports how close the int8 graphs stay to the float32 PyTorch
model on the same input: logit cosine, and for r1 = 64 the kept-set overlap and the near-tie
tolerance the kept positions need (export validation allows TIE_TOL["int8"]).

    python bench/int8_speed.py --size B --rounds 5 --threads 2 --json bench/int8_speed.json

Random weights (trunc-normal, std 0.02): latency does not depend on the values; the closeness
figures are for such weights, not for a trained model.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, header, interleaved, log, parser, session  # noqa: E402
from export_speed import SIZES, random_model  # noqa: E402

from sta_cli.flops import gflops  # noqa: E402
from sta_cli.formats.graph import ExportModule  # noqa: E402
from sta_cli.formats.onnx import export_onnx  # noqa: E402
from sta_cli.formats.quantize import quantize_int8  # noqa: E402
from sta_cli.formats.validate import TIE_TOL, _set_overlap, near_tie_check, recording_scores, stage_scores  # noqa: E402
from sta_cli.pruning import STAConfig  # noqa: E402

TOLERANCES = [0, 1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]


def needed_tolerance(kept_o, kept_r, scores) -> float | None:
    """Smallest tolerance on the grid under which the near-tie rule accepts the kept positions."""
    return next((t for t in TOLERANCES if near_tie_check(kept_o, kept_r, scores, t)[0].ok), None)


@torch.no_grad()
def closeness(model, sessions: dict, x: torch.Tensor) -> dict:
    """int8 graph vs float32 PyTorch (same r1) on x: logit cosine; kept positions for r1 > 0."""
    out = {}
    for name, sess in sessions.items():
        r1 = int(name.split("-r")[1])
        model.set_sta(STAConfig(r1=r1))
        with recording_scores() as record:
            ref = [t for t in ExportModule(model)(x)]
        got = [torch.from_numpy(t) for t in sess.run(None, {"pixel_values": x.numpy()})]
        row = {
            "logit_cosine": round(torch.nn.functional.cosine_similarity(got[0], ref[0], dim=-1).min().item(), 6),
            "same_top1": bool(torch.equal(got[0].argmax(-1), ref[0].argmax(-1))),
        }
        if r1:
            kept_o, kept_r = [t.long() for t in got[1:]], [t.long() for t in ref[1:]]
            row["kept_set_overlap"] = [round(_set_overlap(o, r), 4) for o, r in zip(kept_o, kept_r)]
            row["near_tie_tolerance_needed"] = needed_tolerance(kept_o, kept_r, [stage_scores(e) for e in record])
        out[name] = row
    return out


def main() -> None:
    p = parser(__doc__, rounds=5)
    p.add_argument("--size", default="B", choices=list(SIZES))
    p.add_argument("--r1", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = header("int8_speed.py", size=args.size, r1=args.r1, threads=args.threads, rounds=args.rounds, batch=1)
    cfg = SIZES[args.size]
    model = random_model(cfg)
    x = torch.randn(1, 3, cfg.num_frames, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    sessions, flops, sizes = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r1 in (0, args.r1):
            model.set_sta(STAConfig(r1=r1))
            flops[r1] = gflops(model)
            path = Path(tmp) / f"r{r1}.onnx"
            t0 = time.perf_counter()
            export_onnx(model, path, opset=18, batch=None, metadata={})
            t1 = time.perf_counter()
            info = quantize_int8(path, Path(tmp) / f"r{r1}.int8.onnx")
            log(
                f"ViT-{args.size} r1={r1}: exported in {t1 - t0:.0f}s, quantised in {time.perf_counter() - t1:.0f}s "
                f"({info.quantized}/{info.linear_layers} linear layers int8, {info.float_matmuls} float MatMuls)"
            )
            sessions[f"fp32-r{r1}"] = session(path, args.threads)
            sessions[f"int8-r{r1}"] = session(Path(tmp) / f"r{r1}.int8.onnx", args.threads)
            sizes[f"fp32-r{r1}"], sizes[f"int8-r{r1}"] = path.stat().st_size, info.bytes
        feed = {"pixel_values": x.numpy()}
        log(f"timing {len(sessions)} graphs, batch 1, {args.rounds} rounds interleaved")
        times = interleaved({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, args.rounds)
        close = closeness(model, {k: s for k, s in sessions.items() if k.startswith("int8")}, x)
    base = times["fp32-r0"]
    rows = [
        {
            "graph": k,
            "ms": round(1000 * t, 1),
            "speedup_vs_fp32_unpruned": round(base / t, 3),
            "mb": round(sizes[k] / 1e6, 1),
        }
        for k, t in times.items()
    ]
    results.update(
        gflops={r: round(f, 2) for r, f in flops.items()},
        flop_ratio=round(flops[0] / flops[args.r1], 3),
        rows=rows,
        closeness_to_float32_pytorch=close,
        tie_tol_int8=TIE_TOL["int8"],
    )
    for r in rows:
        log(f"  {r['graph']:10s} {r['ms']:8.1f} ms  {r['speedup_vs_fp32_unpruned']:.2f}x  {r['mb']} MB")
    emit(results, args.json)


if __name__ == "__main__":
    main()
