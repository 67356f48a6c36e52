"""Peak memory and wall time of `sta prune`, `sta export` and `sta profile` on VideoMAE ViT-L, ViT-H (and ViT-g).

Random weights in the exact Hugging Face Hub layout (transformers' config.json and model.safetensors
key names, as `MCG-NJU/videomae-{large,huge}-finetuned-kinetics` publish them) are laid out in a
Hugging Face cache in a temporary folder, and the commands run as a user would, offline:

    HF_HUB_OFFLINE=1 sta prune --model MCG-NJU/videomae-large-finetuned-kinetics --r1 64 -o X
    sta export X --format onnx
    sta profile CLIP --model X          (the packaged demo clip unless --clip)

Each step is its own process, one at a time; its peak resident set size (ru_maxrss from os.wait4,
what `/usr/bin/time -v` reports as "Maximum resident set size") and wall time are recorded next to
the weights' size and the targets (prune <= 2x the weights, export and profile <= 3x + 1 GB).

    python bench/big_models.py --sizes L H --json bench/big_models.json
    python bench/big_models.py --sizes g --steps prune export      # VideoMAE V2 ViT-g, a .pth by path
    python bench/big_models.py --sizes T --steps prune export      # smoke test (tiny ViT, seconds)

Weights are random: memory and time do not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GB = 1e9
COMMIT = "0" * 40  # the snapshot name in the fake cache; any 40 hex digits do
# (repo id, hidden size, layers, heads, MLP width) of the released Kinetics-400 classifiers
SIZES = {
    "L": ("MCG-NJU/videomae-large-finetuned-kinetics", 1024, 24, 16, 4096),
    "H": ("MCG-NJU/videomae-huge-finetuned-kinetics", 1280, 32, 16, 5120),
    "T": ("sta-bench/videomae-tiny-finetuned-kinetics", 64, 4, 2, 256),  # smoke test only
    "g": None,  # VideoMAE V2 ViT-g (4 GB), a .pth by path: vit_g_shapes
}
STEPS = ("prune", "export", "profile")


def hf_config(hidden: int, layers: int, heads: int, mlp: int) -> dict:
    """transformers' VideoMAEConfig as the MCG-NJU Kinetics-400 classifiers' config.json spells it."""
    from sta_cli.models.registry import kinetics400_labels

    labels = kinetics400_labels()
    return {
        "architectures": ["VideoMAEForVideoClassification"],
        "model_type": "videomae",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": mlp,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "image_size": 224,
        "patch_size": 16,
        "num_channels": 3,
        "num_frames": 16,
        "tubelet_size": 2,
        "qkv_bias": True,
        "use_mean_pooling": True,
        "norm_pix_loss": True,
        "decoder_num_attention_heads": 8,
        "decoder_hidden_size": 512,
        "decoder_num_hidden_layers": 12,
        "decoder_intermediate_size": 2048,
        "problem_type": "single_label_classification",
        "torch_dtype": "float32",
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def hf_shapes(hidden: int, layers: int, mlp: int, classes: int = 400) -> dict[str, tuple[int, ...]]:
    """Key -> shape of VideoMAEForVideoClassification's state dict (mean pooling, q/v biases)."""
    shapes = {
        "videomae.embeddings.patch_embeddings.projection.weight": (hidden, 3, 2, 16, 16),
        "videomae.embeddings.patch_embeddings.projection.bias": (hidden,),
    }
    for i in range(layers):
        p = f"videomae.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.attention.{name}.weight"] = (hidden, hidden)
        shapes[p + "attention.attention.q_bias"] = shapes[p + "attention.attention.v_bias"] = (hidden,)
        shapes[p + "attention.output.dense.weight"], shapes[p + "attention.output.dense.bias"] = (
            (hidden, hidden),
            (hidden,),
        )
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (mlp, hidden), (mlp,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (hidden, mlp), (hidden,)
        for norm in ("layernorm_before", "layernorm_after"):
            shapes[p + f"{norm}.weight"] = shapes[p + f"{norm}.bias"] = (hidden,)
    shapes["fc_norm.weight"] = shapes["fc_norm.bias"] = (hidden,)
    shapes["classifier.weight"], shapes["classifier.bias"] = (classes, hidden), (classes,)
    return shapes


def vit_g_shapes(classes: int = 400) -> dict[str, tuple[int, ...]]:
    """VideoMAE V2 ViT-g (patch 14, width 1408, 40 blocks, MLP 6144) in the original layout
    (`modeling_finetune.py`: fused qkv with q/v biases, fc_norm, head), as its .pth files hold it."""
    d, m = 1408, 6144
    shapes = {"patch_embed.proj.weight": (d, 3, 2, 14, 14), "patch_embed.proj.bias": (d,)}
    for i in range(40):
        p = f"blocks.{i}."
        shapes.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "attn.qkv.weight": (3 * d, d)})
        shapes.update({p + "attn.q_bias": (d,), p + "attn.v_bias": (d,), p + "attn.proj.weight": (d, d)})
        shapes.update({p + "attn.proj.bias": (d,), p + "norm2.weight": (d,), p + "norm2.bias": (d,)})
        shapes.update({p + "mlp.fc1.weight": (m, d), p + "mlp.fc1.bias": (m,), p + "mlp.fc2.weight": (d, m)})
        shapes[p + "mlp.fc2.bias"] = (d,)
    shapes.update({"fc_norm.weight": (d,), "fc_norm.bias": (d,), "head.weight": (classes, d), "head.bias": (classes,)})
    return shapes


def random_tensors(shapes: dict[str, tuple[int, ...]]) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    norm = ("norm_before.weight", "norm_after.weight", "norm1.weight", "norm2.weight", "fc_norm.weight")
    return {
        k: (1 + 0.1 * torch.randn(s, generator=gen)) if k.endswith(norm) else 0.02 * torch.randn(s, generator=gen)
        for k, s in shapes.items()
    }


def make_weights(size: str, folder: Path) -> str:
    """Random weights for SIZES[size] -> the --model spec. A Hub repo is laid out as huggingface_hub's
    cache in folder/hf (blobs, snapshot links, refs); ViT-g is a .pth by path, as it is given out."""
    import torch
    from safetensors.torch import save_file

    if size == "g":
        path = folder / "vit_g_hybrid_pt_1200e_k710_it_k400_ft.pth"
        torch.save({"model": random_tensors(vit_g_shapes())}, path)  # utils.save_model's layout
        return str(path)
    repo_id, hidden, layers, heads, mlp = SIZES[size]
    repo = folder / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    for d in (repo / "blobs", snap, repo / "refs"):
        d.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs" / "config.json").write_text(json.dumps(hf_config(hidden, layers, heads, mlp), indent=2))
    save_file(
        random_tensors(hf_shapes(hidden, layers, mlp)), str(repo / "blobs" / "model.safetensors"), {"format": "pt"}
    )
    for name in ("config.json", "model.safetensors"):
        link = snap / name
        if not link.exists():
            link.symlink_to(Path("..", "..", "blobs", name))
    return repo_id


def run_step(cmd: list[str], env: dict, log: Path) -> dict:
    """One command as a child process: exit code, wall seconds, peak RSS (bytes, from wait4).

    Its output goes to `log`, each line prefixed with the time and the highest RSS sampled since the
    line before (from /proc), which attributes the peak to the step sta was in."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], _rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(log, "w") as f:
        for line in proc.stdout:
            f.write(f"[{time.perf_counter() - t0:7.1f} s, peak since the line before {peak[0] / GB:5.2f} GB] {line}")
            peak[0] = 0
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "command": " ".join(["sta", *cmd[3:]]),  # cmd: python -m sta_cli ...
        "exit_code": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_gb": round(usage.ru_maxrss * 1024 / GB, 2),  # ru_maxrss is in KiB on Linux
        "log": str(log),
    }


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # gone, or not Linux
        pass
    return 0


def target(step: str, weights: float) -> float:
    return 2 * weights if step == "prune" else 3 * weights + 1 * GB


def run_size(size: str, work: Path, steps: list[str], clip: Path | None, r1: int) -> dict:
    say(f"{size}: writing random weights into {work}")
    subprocess.run([sys.executable, __file__, "--make-weights", size, str(work)], check=True)
    spec = (work / "spec.txt").read_text()
    weights = sum(
        p.stat().st_size
        for p in work.rglob("*")
        if p.suffix in (".safetensors", ".pth") and p.is_file() and not p.is_symlink()
    )
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
    art = work / f"{size}-r{r1}"
    sta = [sys.executable, "-m", "sta_cli"]
    commands = {
        "prune": [*sta, "prune", "--model", spec, "--r1", str(r1), "-o", str(art), "--force"],
        "export": [*sta, "export", str(art), "--format", "onnx", "--force"],
        "profile": [*sta, "profile", *([str(clip)] if clip else []), "--model", str(art)],
    }
    rows = {}
    for step in steps:
        say(f"{size}: {step} ...")
        row = run_step(commands[step], env, work / f"{size}-{step}.log")
        row["target_gb"] = round(target(step, weights) / GB, 2)
        row["met"] = row["exit_code"] == 0 and row["peak_rss_gb"] <= row["target_gb"]
        rows[step] = row
        say(
            f"{size}: {step}: exit {row['exit_code']}, {row['seconds']} s, peak RSS {row['peak_rss_gb']} GB "
            f"(target {row['target_gb']} GB: {'met' if row['met'] else 'NOT met'})"
        )
        if row["exit_code"] != 0:
            say(Path(row["log"]).read_text()[-2000:])
            break
    return {"model": spec, "weights_gb": round(weights / GB, 3), "r1": r1, "steps": rows}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_clip() -> Path | None:
    from sta_cli.runtime.loading import demo_clip

    return demo_clip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["L", "H"], choices=list(SIZES))
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--r1", type=int, default=64)
    ap.add_argument("--clip", type=Path, default=None, help="video for sta profile (default: the demo clip)")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (logs, artifacts)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--make-weights", nargs=2, metavar=("SIZE", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_weights:
        folder = Path(args.make_weights[1])
        (folder / "spec.txt").write_text(make_weights(args.make_weights[0], folder))
        return
    clip = args.clip or default_clip()
    results = {"clip": str(clip) if clip else None, "sizes": {}}
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"sta-big-{size}-", dir=args.keep))
        try:
            results["sizes"][size] = run_size(size, work, args.steps, clip, args.r1)
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
