"""Latency of exported STA models: ONNX Runtime (CPU) and torch eager, ViT-S and ViT-B at 16x224^2.

For every size and r1 in {0, 32, 48, 64}: export with `sta_cli.formats.onnx.export_onnx` (the code
`sta export` runs, dynamic batch), then time batch 1 and 4 with a fixed thread count. Runs are
interleaved across r1 values (one run of each config per round), so slow drifts of a shared
machine hit every config alike; the median over rounds is reported. The speedup over r1 = 0 sits
next to the ideal, the FLOP ratio (fvcore convention, `sta_cli.flops.gflops`).

STA scoring share: the r1 = 64 model is exported a second time with the token selection replaced
by a fixed one (same kept-token counts, same gathers, no scores). Its time difference to the real
graph is what scoring costs. As a cross-check, an ONNX Runtime profile attributes kernel time to
nodes outside the transformer blocks (scoring + gathers + pooling: an upper bound).

    python bench/export_speed.py --sizes S B --rounds 5 --threads 2 --json bench/export_speed.json

Random weights: latency does not depend on the values (every shape is fixed by r1).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, header, interleaved, log, parser, session  # noqa: E402

from sta_cli.flops import gflops  # noqa: E402
from sta_cli.formats.onnx import export_onnx  # noqa: E402
from sta_cli.models.base import ModelCard  # noqa: E402
from sta_cli.models.layers import StaScoring  # noqa: E402
from sta_cli.models.videomae import VideoMAE, VideoMAEConfig  # noqa: E402
from sta_cli.pruning import STAConfig  # noqa: E402

SIZES = {
    "S": VideoMAEConfig(embed_dim=384, depth=12, num_heads=6, mlp_dim=1536, num_classes=400),
    "B": VideoMAEConfig(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, num_classes=400),
    "T": VideoMAEConfig(embed_dim=64, depth=3, num_heads=2, mlp_dim=128, num_classes=10),  # smoke test only
}
R1S = (0, 32, 48, 64)


def random_model(cfg: VideoMAEConfig, seed: int = 0) -> VideoMAE:
    torch.manual_seed(seed)
    model = VideoMAE(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.trunc_normal_(p, std=0.02)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    model.card = ModelCard("videomae", "random", [f"class_{i}" for i in range(cfg.num_classes)], {})
    return model


class FixedSelection(StaScoring):
    """STA's scoring swapped for a fixed selection: per group, the first n - r tokens (no scores computed)."""

    def forward(self, metric, x, positions, stage, sta, stage_index, grid_hw):
        B, N, _ = x.shape
        n = N // stage.groups
        keep = torch.arange(n - stage.drop)
        idx = (keep[None, :] + n * torch.arange(stage.groups)[:, None]).reshape(-1)
        return idx.expand(B, -1)


@contextmanager
def fixed_selection(model):
    """`model` with its StaScoring module replaced by FixedSelection for the duration of the block."""
    real = model.sta_scoring
    model.sta_scoring = FixedSelection()
    try:
        yield model
    finally:
        model.sta_scoring = real


def profile_share(path: Path, feed: dict, threads: int, runs: int = 3) -> dict:
    """ORT kernel time outside the transformer blocks / total (upper bound on scoring + gathers)."""
    import onnx

    scopes = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        classes = meta.get("pkg.torch.onnx.class_hierarchy", "")
        scopes[n.name] = "block" if ("Block" in classes or "PatchEmbed" in classes) else "top"
    sess = session(path, threads, profile=True)
    for _ in range(runs + 1):
        sess.run(None, feed)
    trace_file = Path(sess.end_profiling())
    trace = json.loads(trace_file.read_text())
    trace_file.unlink()
    first_run = min((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])
    after_warmup = first_run["ts"] + first_run["dur"]
    totals = {"block": 0.0, "top": 0.0, "other": 0.0}
    by_op: dict[str, float] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < after_warmup:
            continue
        # Fused nodes are named after the first node they absorbed: "node_MatMul_66/MatMulScaleFusion/".
        name = e["name"][: -len("_kernel_time")].split("/")[0]
        scope = scopes.get(name, "other")
        totals[scope] += e["dur"]
        if scope == "top":
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"]
    all_ = sum(totals.values())
    top_ops = sorted(by_op.items(), key=lambda kv: -kv[1])[:6]
    return {
        **{k: round(v / all_, 4) for k, v in totals.items()},
        "top_by_op": {k: round(v / all_, 4) for k, v in top_ops},
    }


def bench_size(size: str, rounds: int, threads: int, workdir: Path) -> dict:
    cfg = SIZES[size]
    model = random_model(cfg)
    x = {b: torch.randn(b, 3, cfg.num_frames, cfg.image_size, cfg.image_size) for b in (1, 4)}
    _rows, sessions, flops = {}, {}, {}
    for r1 in R1S:
        model.set_sta(STAConfig(r1=r1))
        flops[r1] = gflops(model)
        path = workdir / f"{size}-r{r1}.onnx"
        t0 = time.perf_counter()
        export_onnx(model, path, opset=18, batch=None, metadata={})
        log(f"ViT-{size} r1={r1}: exported in {time.perf_counter() - t0:.0f}s, {flops[r1]:.1f} GFLOPs")
        sessions[r1] = session(path, threads)
    model.set_sta(STAConfig(r1=64))
    with fixed_selection(model):
        export_onnx(model, workdir / f"{size}-r64-fixed.onnx", opset=18, batch=None, metadata={})
    fixed = session(workdir / f"{size}-r64-fixed.onnx", threads)

    eager = {}
    for r1 in R1S:
        eager[r1] = random_model(cfg)
        eager[r1].set_sta(STAConfig(r1=r1))

    out = {
        "size": size,
        "threads": threads,
        "rounds": rounds,
        "gflops": {r: round(f, 2) for r, f in flops.items()},
        "batches": {},
    }
    for b in (1, 4):
        feed = {"pixel_values": x[b].numpy()}
        log(f"ViT-{size} batch {b}: ONNX Runtime ({rounds} rounds)")
        configs = {f"ort-{r1}": (lambda s=sessions[r1], feed=feed: s.run(None, feed)) for r1 in R1S}
        configs["ort-64-fixed"] = lambda feed=feed: fixed.run(None, feed)
        ort_t = interleaved(configs, rounds)
        log(f"ViT-{size} batch {b}: torch eager ({rounds} rounds)")

        def run_eager(m, b=b):
            with torch.inference_mode():
                m(x[b])

        torch_t = interleaved({f"torch-{r1}": (lambda m=eager[r1]: run_eager(m)) for r1 in R1S}, rounds)
        table = []
        for r1 in R1S:
            table.append(
                {
                    "r1": r1,
                    "gflops": round(flops[r1], 2),
                    "flop_ratio": round(flops[0] / flops[r1], 3),
                    "ort_ms": round(1000 * ort_t[f"ort-{r1}"], 1),
                    "ort_speedup": round(ort_t["ort-0"] / ort_t[f"ort-{r1}"], 3),
                    "torch_ms": round(1000 * torch_t[f"torch-{r1}"], 1),
                    "torch_speedup": round(torch_t["torch-0"] / torch_t[f"torch-{r1}"], 3),
                }
            )
        scoring = (ort_t["ort-64"] - ort_t["ort-64-fixed"]) / ort_t["ort-64"]
        out["batches"][b] = {
            "rows": table,
            "ort_ms_r64_fixed_selection": round(1000 * ort_t["ort-64-fixed"], 1),
            "scoring_share_r64": round(scoring, 4),
        }
        log(f"ViT-{size} batch {b}: ORT profile")
        out["batches"][b]["ort_profile_share_r64"] = profile_share(workdir / f"{size}-r64.onnx", feed, threads)
        for row in table:
            log(
                f"  r1={row['r1']:2d}  ORT {row['ort_ms']:8.1f} ms ({row['ort_speedup']:.2f}x)  torch {row['torch_ms']:8.1f} ms "
                f"({row['torch_speedup']:.2f}x)  FLOP ratio {row['flop_ratio']:.2f}x"
            )
        log(f"  scoring share at r1=64 (vs fixed selection): {100 * scoring:.1f}%")
    return out


def main() -> None:
    p = parser(__doc__, rounds=5)
    p.add_argument("--sizes", nargs="+", default=["S", "B"], choices=list(SIZES))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = header("export_speed.py", sizes=[])
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            results["sizes"].append(bench_size(size, args.rounds, args.threads, Path(tmp)))
    emit(results, args.json)


if __name__ == "__main__":
    main()
