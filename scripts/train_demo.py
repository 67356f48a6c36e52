#!/usr/bin/env python
"""Train the packaged demo model (sta_cli/assets/demo) on the synthetic action dataset.

    python scripts/train_demo.py                  # writes sta_cli/assets/demo/
    python scripts/train_demo.py --out /tmp/demo  # somewhere else

Reproducible: fixed seeds, single-process data, fixed thread count; every training clip is fresh
(step k uses train-split clips k*batch .. k*batch+batch-1), so there is no overfitting to a fixed
set. Training stops early, deterministically, once the validation split reaches --target.
At the end it measures top-1 on the held-out test split: unpruned, STA and random pruning at the
same r1 (mean over seeds), and writes the weights, config.json, a sample clip and sample.json.
Splits use disjoint seeds (synthetic.SPLIT_BASE): train for training, val for early stopping,
test for the reported figures (and the pytest check in tests/test_demo.py).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sta_cli.demo import clips_to_input, make_dataset, predict, render_clip
from sta_cli.demo.synthetic import LABELS, NUM_FRAMES, SIZE, clip_seed
from sta_cli.flops import gflops
from sta_cli.io.artifact import model_config
from sta_cli.io.outputs import new_folder, write_json
from sta_cli.io.video import load_clip
from sta_cli.models.base import ModelCard
from sta_cli.models.videomae import VideoMAE, VideoMAEConfig
from sta_cli.pruning import STAConfig

ROOT = Path(__file__).resolve().parent.parent
MODEL = dict(
    depth=6,
    num_classes=len(LABELS),
    image_size=SIZE,
    patch_size=8,
    num_frames=NUM_FRAMES,
    tubelet_size=2,
)
PREPROCESSING = {
    "num_frames": NUM_FRAMES,
    "frame_stride": 1,  # the generator renders consecutive frames of one action
    "short_side": SIZE,
    "crop_size": SIZE,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "value_range": 1.0,
}
SAMPLE = {"split": "test", "index": 1}  # test clip 1: class 1 ("moving right")


def log(msg: str) -> None:
    print(msg, flush=True)


def model_settings(args) -> dict:
    return {**MODEL, "embed_dim": args.embed_dim, "num_heads": args.heads, "mlp_dim": args.mlp_dim}


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * 0.5 * (1 + math.cos(math.pi * progress))


def accuracy(model: VideoMAE, x: torch.Tensor, y: torch.Tensor, sta: STAConfig) -> float:
    model.set_sta(sta)
    acc = (predict(model, x) == y).float().mean().item()
    model.set_sta(STAConfig())
    return acc


def train(args) -> VideoMAE:
    torch.manual_seed(args.seed)
    model = VideoMAE(VideoMAEConfig(**model_settings(args)))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    val_clips, val_y = make_dataset(args.val_clips, "val")
    val_x, val_y = clips_to_input(val_clips, PREPROCESSING), torch.from_numpy(val_y)
    rng = np.random.default_rng(args.seed)
    t0, losses, hits = time.perf_counter(), [], []
    for step in range(args.steps):
        model.train()
        labels = rng.integers(len(LABELS), size=args.batch)
        clutter = min(1.0, step / args.curriculum) if args.curriculum else 1.0
        seeds = [clip_seed("train", step * args.batch + i) for i in range(args.batch)]
        clips = np.stack([render_clip(int(c), s, clutter=clutter) for c, s in zip(labels, seeds)])
        x, y = clips_to_input(clips, PREPROCESSING), torch.from_numpy(labels)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):  # weights stay fp32
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        hits.append((logits.argmax(-1) == y).float().mean().item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            val = accuracy(model, val_x, val_y, STAConfig())
            log(
                f"step {step + 1:5d}  clutter {clutter:.2f}  loss {np.mean(losses[-args.eval_every :]):.3f}  "
                f"train top-1 {np.mean(hits[-args.eval_every :]):.3f}  val top-1 {val:.3f}  "
                f"lr {lr_at(step, args):.2e}  {time.perf_counter() - t0:.0f}s"
            )
            if val >= args.target and clutter == 1.0:
                log(f"validation top-1 {val:.3f} >= target {args.target}: stopping")
                break
    return model.eval()


def measure(model: VideoMAE, args) -> dict:
    """Held-out top-1: unpruned, STA, random pruning (several seeds), and GFLOPs."""
    clips, y = make_dataset(args.test_clips, "test")
    x, y = clips_to_input(clips, PREPROCESSING), torch.from_numpy(y)
    sta = STAConfig(r1=args.r1)
    randoms = [accuracy(model, x, y, STAConfig.random_baseline(args.r1, seed)) for seed in range(args.random_seeds)]
    model.set_sta(sta)
    pruned_flops = gflops(model)
    model.set_sta(STAConfig())
    return {
        "test_clips": args.test_clips,
        "r1": args.r1,
        "top1_unpruned": accuracy(model, x, y, STAConfig()),
        "top1_sta": accuracy(model, x, y, sta),
        "top1_random": randoms,
        "top1_random_mean": float(np.mean(randoms)),
        "top1_random_sd": float(np.std(randoms, ddof=1)) if len(randoms) > 1 else 0.0,
        "gflops_unpruned": round(gflops(model), 4),
        "gflops_sta": round(pruned_flops, 4),
    }


def encode_mp4(frames: np.ndarray, path: Path, fps: int = 8) -> None:
    """(T, H, W, 3) uint8 -> H.264 mp4 (yuv420p, near-lossless crf) with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "12", "preset": "medium"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def save(model: VideoMAE, args, settings: dict, results: dict) -> None:
    model.card = ModelCard("videomae", "demo", list(LABELS), dict(PREPROCESSING))
    label = SAMPLE["index"] % len(LABELS)
    frames = render_clip(label, clip_seed(SAMPLE["split"], SAMPLE["index"]))
    with new_folder(Path(args.out), force=True) as tmp:
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "producer": "sta train_demo"})
        write_json(tmp / "config.json", model_config(model))
        encode_mp4(frames, tmp / "sample.mp4")
        with torch.no_grad():
            pred = int(model(load_clip(tmp / "sample.mp4", model.preprocessing)).argmax(-1))
        log(f"sample clip: true {LABELS[label]!r}, predicted {LABELS[pred]!r}")
        if pred != label:
            raise SystemExit("the model misclassifies the sample clip; not writing the assets")
        write_json(
            tmp / "sample.json",
            {
                "file": "sample.mp4",
                "label": LABELS[label],
                "class_index": label,
                **SAMPLE,
                "seed": clip_seed(SAMPLE["split"], SAMPLE["index"]),
                "fps": 8,
                "codec": "h264",
            },
        )
        write_json(tmp / "training.json", {"settings": settings, "results": results})
    log(f"wrote {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", default=str(ROOT / "sta_cli" / "assets" / "demo"))
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--mlp-dim", type=int, default=256)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--curriculum", type=int, default=500, help="steps over which clutter ramps from 0 to 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is faster than 2 on a busy 2-core machine")
    p.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=False, help="bfloat16 autocast for training"
    )
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--val-clips", type=int, default=128)
    p.add_argument("--target", type=float, default=0.98, help="stop once validation top-1 reaches this")
    p.add_argument("--test-clips", type=int, default=512)
    p.add_argument(
        "--r1", type=int, default=21, help="STA r1 for the final measurement (a third of 64 tokens per frame)"
    )
    p.add_argument("--random-seeds", type=int, default=5)
    p.add_argument("--no-save", action="store_true", help="train and measure only")
    p.add_argument("--evaluate", metavar="R1,R1,...", help="no training: measure the model in --out at these r1")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    if args.evaluate:
        import sta_cli

        model = sta_cli.load(args.out)
        for r1 in (int(v) for v in args.evaluate.split(",")):
            args.r1 = r1
            log(json.dumps(measure(model, args)))
        return
    settings = {**vars(args), "model": model_settings(args), "preprocessing": PREPROCESSING, "torch": torch.__version__}
    settings.pop("out"), settings.pop("no_save")
    log("settings: " + json.dumps(settings))
    t0 = time.perf_counter()
    model = train(args)
    settings["train_seconds"] = round(time.perf_counter() - t0)
    log(f"training took {settings['train_seconds']}s")
    results = measure(model, args)
    log("held-out results: " + json.dumps(results))
    if not args.no_save:
        save(model, args, settings, results)


if __name__ == "__main__":
    main()
