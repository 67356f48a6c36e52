"""One table: every way to run a video transformer here, same clip, same run, side by side.

Rows: ViT-S and ViT-B (VideoMAE, 16x224^2) at batch 1 and 8, Video Swin-T (32x224^2) at batch 1, and
D: the packaged demo's architecture (a 6-block VideoMAE, 64 wide, 16x64^2; pruned at its default
r1 = 21, the first thing `sta profile` shows a new user).
Paths, unpruned and pruned at the paper's r1 (`api.paper_r1`: ViT 64, Swin-T 256):

- transformers eager: `VideoMAEForVideoClassification` (sdpa attention), what users run today;
  same weights as ours (converted by our checkpoint filter). ViT only (transformers has no Video Swin).
- sta eager: our model, `torch.inference_mode`.
- sta compiled: `sta_cli.compiled.compile_model` (torch.compile, fullgraph); compile time reported.
- ONNX Runtime float32: `export_onnx` (what `sta export` runs), CPU provider, idle-thread
  spinning off (`sta_cli.runtime.ort.session`).
- ONNX Runtime int8 pruned: the pruned graph through `formats.quantize.quantize_int8` (what
  `sta export --quantize int8` writes).

Timing: one warm-up call per path, then `--rounds` rounds of one call per path (interleaved, so a
busy phase of the machine hits every path alike); the median per path. Speedup of a path =
its unpruned / its pruned latency; "share" = speedup / FLOP ratio (1.0 = the ideal).
Peak memory: every path again in a fresh subprocess (build, one warm-up, one run), its peak RSS
(VmHWM): what a process running only that path needs (the compiled path's includes the
compiler; the ONNX paths' do not include the export, which the parent did).

Random weights (no Hub): latency does not depend on the values.

    python bench/table.py --rows S1 S8 B1 B8 T1 --rounds 3 --threads 2 --json table.json
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, header, interleaved, log, parser, session  # noqa: E402
from export_speed import SIZES as VIT_SIZES  # noqa: E402
from export_speed import random_model as random_vit  # noqa: E402
from swin_speed import random_model as random_swin  # noqa: E402

from sta_cli.flops import gflops  # noqa: E402
from sta_cli.models.videoswin import VideoSwinConfig  # noqa: E402
from sta_cli.pruning import STAConfig  # noqa: E402
from sta_cli.runtime.loading import paper_r1  # noqa: E402

ARCHS = {"S": "ViT-S", "B": "ViT-B", "T": "Swin-T", "D": "demo", "tiny": "ViT tiny (smoke test)"}
PATHS = ("hf_eager", "sta_eager", "sta_compiled", "ort_fp32", "ort_int8")


def vit_config(arch: str):
    """Our VideoMAEConfig of a ViT row (D: the packaged demo's, read from its config.json)."""
    if arch == "D":
        from sta_cli.demo import DEMO_DIR
        from sta_cli.models.videomae import VideoMAEConfig

        return VideoMAEConfig.from_dict(json.loads((DEMO_DIR / "config.json").read_text())["model"])
    return VIT_SIZES["T" if arch == "tiny" else arch]


def hf_config(arch: str):
    from transformers import VideoMAEConfig

    c = vit_config(arch)
    return VideoMAEConfig(
        hidden_size=c.embed_dim,
        num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads,
        intermediate_size=c.mlp_dim,
        num_labels=c.num_classes,
        image_size=c.image_size,
        patch_size=c.patch_size,
        num_frames=c.num_frames,
        tubelet_size=c.tubelet_size,
        use_mean_pooling=True,
        attn_implementation="sdpa",
    )


def build(arch: str, with_hf: bool):
    """(our model with random weights, transformers' VideoMAEForVideoClassification or None).

    ViT: transformers' model is built first (its own random init) and ours loads its weights through
    our checkpoint filter, so both compute the same function (checked: same logits)."""
    if arch == "T":
        return random_swin(VideoSwinConfig()), None
    if not with_hf:  # the memory subprocesses: no second model in the process
        return random_vit(vit_config(arch)), None
    from transformers import VideoMAEForVideoClassification

    from sta_cli.models.videomae import VideoMAE, VideoMAEConfig, checkpoint_filter_fn

    hc = hf_config(arch)
    torch.manual_seed(0)
    hf = VideoMAEForVideoClassification(hc).eval()
    model = VideoMAE(VideoMAEConfig.from_hf(hc.to_dict())).eval()
    model.load_state_dict(checkpoint_filter_fn(hf.state_dict()))
    return model, hf


def clip(cfg, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, cfg.in_chans, cfg.num_frames, cfg.image_size, cfg.image_size, generator=g)


def onnx_file(workdir: Path, arch: str, side: str, int8: bool) -> Path:
    return workdir / f"{arch}-{side}{'.int8' if int8 else ''}.onnx"


def export(model, sta: STAConfig, workdir: Path, arch: str, side: str) -> None:
    """Float32 ONNX of `model` at `sta` (and for the pruned side its int8 twin), unless already there."""
    from sta_cli.formats.onnx import export_onnx
    from sta_cli.formats.quantize import quantize_int8

    path = onnx_file(workdir, arch, side, False)
    if path.exists():
        return
    t0 = time.perf_counter()
    model.set_sta(sta)
    export_onnx(model, path, opset=18, batch=None, metadata={})
    if side == "pruned":
        quantize_int8(path, onnx_file(workdir, arch, side, True))
    log(f"  exported {path.name}{' (+ int8)' if side == 'pruned' else ''} in {time.perf_counter() - t0:.0f}s")


def ort_runner(path: Path, x: torch.Tensor, threads: int):
    sess = session(path, threads)
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def torch_runner(model, sta: STAConfig | None, x: torch.Tensor):
    def run():
        model.set_sta(sta)
        with torch.inference_mode():
            model(x)

    return run


def runners(arch: str, batch: int, threads: int, workdir: Path, only: str | None = None) -> tuple[dict, dict]:
    """{(path, "unpruned"|"pruned"): callable} for one row, and facts (GFLOPs, r1, compile seconds).
    only: build just that path (the peak-memory subprocess; the ONNX files must exist then)."""
    want = lambda p: only is None or only == p  # noqa: E731
    if only in ("ort_fp32", "ort_int8"):  # a process running ONNX Runtime holds no torch model
        x = clip(VideoSwinConfig() if arch == "T" else vit_config(arch), batch)
        side = {
            (only, s): ort_runner(onnx_file(workdir, arch, s, only == "ort_int8"), x, threads)
            for s in ("unpruned", "pruned")
            if onnx_file(workdir, arch, s, only == "ort_int8").exists()
        }
        return side, {}
    model, hf = build(arch, with_hf=want("hf_eager"))
    x = clip(model.cfg, batch)
    sta = STAConfig(r1=paper_r1(model))
    model.set_sta(STAConfig())
    facts = {"gflops_unpruned": gflops(model)}
    model.set_sta(sta)
    facts.update(gflops_pruned=gflops(model), r1=sta.r1)
    if only is None:
        with torch.inference_mode():
            model.set_sta(STAConfig())
            facts["max_abs_logit_diff_vs_transformers"] = hf and float(
                (hf(pixel_values=x.transpose(1, 2)).logits - model(x)).abs().max()
            )
        for side, cfg in (("unpruned", STAConfig()), ("pruned", sta)):
            export(model, cfg, workdir, arch, side)
    out = {}
    if hf is not None:
        xt = x.transpose(1, 2)  # transformers takes (B, T, C, H, W)

        def run_hf():
            with torch.inference_mode():
                hf(pixel_values=xt)

        out[("hf_eager", "unpruned")] = run_hf
    if want("sta_eager"):
        for side, cfg in (("unpruned", STAConfig()), ("pruned", sta)):
            out[("sta_eager", side)] = torch_runner(model, cfg, x)
    if want("sta_compiled"):
        from sta_cli.compiled import compile_model, warm_up

        compiled = compile_model(model)
        log(f"  compiling {ARCHS[arch]} batch {batch}")
        seconds = warm_up(compiled, x, {"unpruned": STAConfig(), "pruned": sta})
        facts["compile_seconds"] = {k: round(v, 1) for k, v in seconds.items()}
        for side, cfg in (("unpruned", STAConfig()), ("pruned", sta)):
            out[("sta_compiled", side)] = torch_runner(compiled, cfg, x)
    for path_name, side, int8 in (
        ("ort_fp32", "unpruned", False),
        ("ort_fp32", "pruned", False),
        ("ort_int8", "pruned", True),
    ):
        if want(path_name):
            out[(path_name, side)] = ort_runner(onnx_file(workdir, arch, side, int8), x, threads)
    return out, facts


def peak_rss(arch: str, batch: int, path: str, side: str, threads: int, workdir: Path) -> float | None:
    """Peak RSS (MB) of a fresh process that builds and runs only this path."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        arch,
        str(batch),
        path,
        side,
        "--threads",
        str(threads),
        "--workdir",
        str(workdir),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def child(arch: str, batch: int, path: str, side: str, threads: int, workdir: Path) -> None:
    torch.set_num_threads(threads)
    fns, _ = runners(arch, batch, threads, workdir, only=path)
    fn = fns[(path, side)]
    fn()
    fn()
    print(json.dumps({"peak_rss_mb": peak_rss_mb_self()}))


def peak_rss_mb_self() -> float:
    """This process's peak RSS: VmHWM of its own address space. Not ru_maxrss, which Linux carries
    over from the parent through fork + exec (every child would report at least the parent's RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # not Linux


def bench_row(arch: str, batch: int, rounds: int, threads: int, workdir: Path, memory: bool) -> dict:
    log(f"{ARCHS[arch]} batch {batch}: building paths")
    fns, facts = runners(arch, batch, threads, workdir)
    log(f"{ARCHS[arch]} batch {batch}: timing {len(fns)} runs per round, {rounds} rounds")
    med = interleaved(fns, rounds)
    timed = set(fns)
    del fns  # the memory subprocesses below need the RAM: ViT-B batch 8 held 16 GB here (sessions' arenas)
    gc.collect()
    ratio = facts["gflops_unpruned"] / facts["gflops_pruned"]
    row = {
        "arch": ARCHS[arch],
        "batch": batch,
        "r1": facts["r1"],
        "gflops_unpruned": round(facts["gflops_unpruned"], 2),
        "gflops_pruned": round(facts["gflops_pruned"], 2),
        "flop_ratio": round(ratio, 3),
        "compile_seconds": facts.get("compile_seconds"),
        "max_abs_logit_diff_vs_transformers": facts.get("max_abs_logit_diff_vs_transformers"),
        "paths": {},
    }
    for path in PATHS:
        u, p = med.get((path, "unpruned")), med.get((path, "pruned"))
        entry = {"unpruned_ms": u and round(1000 * u, 2), "pruned_ms": p and round(1000 * p, 2)}
        if u and p:
            entry.update(speedup=round(u / p, 3), share=round(u / p / ratio, 3))
        if memory:
            entry["peak_rss_mb"] = {
                s: peak_rss(arch, batch, path, s, threads, workdir)
                for s in ("unpruned", "pruned")
                if (path, s) in timed
            }
        row["paths"][path] = entry
    base = med.get(("hf_eager", "unpruned"))
    if base:  # everything against what users run today
        row["vs_transformers_eager"] = {f"{path} {s}": round(base / t, 3) for (path, s), t in med.items()}
    log(json.dumps(row))
    return row


LABELS = {
    "hf_eager": "transformers eager",
    "sta_eager": "sta eager",
    "sta_compiled": "sta compiled",
    "ort_fp32": "ONNX Runtime fp32",
    "ort_int8": "ONNX Runtime int8",
}


def markdown(results: dict) -> str:
    """The results as the docs/benchmarks.md table: one line per row and path."""
    lines = [
        "| model | batch | r1 | GFLOPs | FLOP ratio | path | unpruned ms | pruned ms | speedup | share of FLOP ratio "
        "| vs transformers eager (pruned) | peak RSS MB (unpruned / pruned) |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    fmt = lambda v, f="{:.0f}": "not measured" if v is None else v if isinstance(v, str) else f.format(v)  # noqa: E731
    ms = lambda v: fmt(v, "{:.0f}" if isinstance(v, str) or v is None or v >= 100 else "{:.2f}")  # noqa: E731
    for row in results["rows"]:
        for path in PATHS:
            e = row["paths"].get(path, {})
            if path == "hf_eager" and row["arch"].startswith("Swin"):
                continue  # transformers has no Video Swin
            vs = (row.get("vs_transformers_eager") or {}).get(f"{path} pruned")
            rss = e.get("peak_rss_mb") if "peak_rss_mb" in e else {"unpruned": None, "pruned": None}
            na = {"hf_eager": ("pruned", "speedup", "share"), "ort_int8": ("unpruned", "speedup", "share")}.get(
                path, ()
            )
            e = {**e, **{k: "n/a" for k in ("pruned_ms", "unpruned_ms", "speedup", "share") if k.split("_")[0] in na}}
            rss = {**rss, **{k: "n/a" for k in ("unpruned", "pruned") if k in na}}
            vs = "n/a" if path == "hf_eager" or row["arch"].startswith("Swin") else vs
            lines.append(
                f"| {row['arch']} | {row['batch']} | {row['r1']} | {row['gflops_unpruned']} -> {row['gflops_pruned']} | "
                f"{row['flop_ratio']:.2f}x | {LABELS[path]} | {ms(e.get('unpruned_ms'))} | {ms(e.get('pruned_ms'))} | "
                f"{fmt(e.get('speedup'), '{:.2f}x')} | {fmt(e.get('share'), '{:.2f}')} | {fmt(vs, '{:.2f}x')} | "
                f"{fmt(rss.get('unpruned'))} / {fmt(rss.get('pruned'))} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__, rounds=3)
    p.add_argument(
        "--rows",
        nargs="+",
        default=["S1", "S8", "B1", "B8", "T1"],
        help="ARCH+BATCH: S, B (ViT), T (Swin-T), D (the demo's architecture), tiny (smoke test); e.g. S1 B8",
    )
    p.add_argument("--no-memory", action="store_true", help="Skip the peak-RSS subprocesses.")
    p.add_argument("--render", type=Path, default=None, help="Print a results JSON as the docs' markdown table.")
    p.add_argument("--child", nargs=4, metavar=("ARCH", "BATCH", "PATH", "SIDE"), help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.render:
        return print(markdown(json.loads(args.render.read_text())))
    if args.child:
        arch, batch, path, side = args.child
        return child(arch, int(batch), path, side, args.threads, args.workdir)
    torch.set_num_threads(args.threads)
    import transformers

    results = header(
        "table.py", transformers=transformers.__version__, threads=args.threads, rounds=args.rounds, rows=[]
    )
    with tempfile.TemporaryDirectory(prefix="sta-table-") as tmp:
        for spec in args.rows:
            arch, batch = spec.rstrip("0123456789"), int(spec[len(spec.rstrip("0123456789")) :])
            results["rows"].append(bench_row(arch, batch, args.rounds, args.threads, Path(tmp), not args.no_memory))
            if args.json:  # partial results survive an interrupted run
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    emit(results, args.json)


if __name__ == "__main__":
    main()
