"""The packaged demo model, its sample clip, and the paper's central claim measured on it.

Claim (paper abstract, Table 1): STA at r1 around a third of the per-frame tokens keeps top-1
within about 2 points of the unpruned model, and it beats random pruning of the same number of
tokens. Measured here on held-out synthetic clips (the test split: seeds the training script never
used for training or early stopping).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sta_cli
from sta_cli.demo import DEMO_DIR, clips_to_input, make_dataset, predict, render_clip, sample_info
from sta_cli.demo.synthetic import LABELS, clip_seed
from sta_cli.io.checkpoints import resolve
from sta_cli.io.video import load_clip
from sta_cli.pruning import STAConfig

HELD_OUT = 96  # 12 clips per class
RANDOM_SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def demo():
    return sta_cli.load("demo")


@pytest.fixture(scope="module")
def held_out(demo):
    clips, labels = make_dataset(HELD_OUT, "test")
    return clips_to_input(clips, demo.preprocessing), torch.from_numpy(labels)


def top1(model, x, y, sta: STAConfig) -> float:
    model.set_sta(sta)
    try:
        return (predict(model, x) == y).float().mean().item()
    finally:
        model.set_sta(STAConfig())


def test_generator_is_deterministic_and_splits_are_disjoint():
    a, b = render_clip(3, 12345), render_clip(3, 12345)
    assert a.shape == (16, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_clip(3, 12346))
    clips, labels = make_dataset(16, "test")
    assert list(labels) == [i % len(LABELS) for i in range(16)]
    assert np.array_equal(clips[5], render_clip(5, clip_seed("test", 5)))
    # seeds of different splits never meet
    train_max = clip_seed("val", 0) - 1
    assert clip_seed("train", 10**6) < train_max < clip_seed("val", 0) < clip_seed("test", 0)


def test_clips_have_static_background_and_a_small_actor():
    """What STA relies on: most tokens repeat over time, the action lives in a few of them."""
    clip = render_clip(1, clip_seed("test", 1)).astype(np.float32)  # moving right
    change = np.abs(np.diff(clip, axis=0)).mean(-1)  # (T-1, H, W)
    moving = (change > 40).mean()
    assert 0.002 < moving < 0.08  # a small object moves ...
    assert np.median(change) < 6  # ... over a static (noisy) background


def test_demo_loads_through_the_normal_path(demo):
    src = resolve("demo")
    assert src.alias is not None and src.alias.packaged and src.weights[0].parent == DEMO_DIR
    assert not (DEMO_DIR / "sta.json").exists() and not src.is_artifact
    assert demo.card.family == "videomae" and demo.sta.r1 == 0
    assert demo.labels == list(LABELS)
    cfg = demo.cfg
    n_t, h, w = cfg.grid
    assert n_t % 4 == 0 and h * w >= 48
    pre = demo.preprocessing
    assert pre["crop_size"] == pre["short_side"] == cfg.image_size and pre["num_frames"] == cfg.num_frames
    assert (DEMO_DIR / "model.safetensors").stat().st_size < 8 * 2**20


def test_sample_clip_decodes_and_is_classified_correctly(demo):
    info = sample_info()
    x = load_clip(info["file"], demo.preprocessing)
    assert x.shape == (1, 3, demo.cfg.num_frames, demo.cfg.image_size, demo.cfg.image_size)
    with torch.no_grad():
        pred = demo(x).argmax(-1).item()
    assert demo.labels[pred] == info["label"] == LABELS[info["class_index"]]


def test_sta_keeps_accuracy_and_beats_random_pruning(demo, held_out):
    x, y = held_out
    n_s = demo.cfg.grid[1] * demo.cfg.grid[2]
    r1 = round(n_s / 3)
    unpruned = top1(demo, x, y, STAConfig())
    sta = top1(demo, x, y, STAConfig(r1=r1))
    randoms = [top1(demo, x, y, STAConfig.random_baseline(r1, seed)) for seed in RANDOM_SEEDS]
    print(
        f"\nheld-out top-1 on {len(y)} clips, r1={r1}: unpruned {unpruned:.3f}  STA {sta:.3f}  "
        f"random {np.mean(randoms):.3f} +- {np.std(randoms, ddof=1):.3f} {randoms}"
    )
    assert unpruned >= 0.85  # the demo model must have learned the task for the claim to mean anything
    assert sta >= unpruned - 0.02
    assert sta > np.mean(randoms)


def test_prune_demo_via_cli(tmp_path):
    """`sta prune --model demo` works offline with no other option: r1 defaults to the paper's 64 of 196
    tokens scaled to the demo's 64 (21), and it validates on the demo's own sample clip."""
    from sta_cli.cli import app

    out = tmp_path / "demo-pruned"
    result = CliRunner().invoke(app, ["prune", "--model", "demo", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"]["name"] == "demo" and report["sta"]["r1"] == 21
    assert report["gflops"]["pruned"] < 0.6 * report["gflops"]["unpruned"]
    v = report["validation"]
    assert v["reproduces_source"]["ok"] and v["clip"] == str(sample_info()["file"])
    assert v["top5_unpruned"][0]["label"] == v["top5_pruned"][0]["label"] == sample_info()["label"]
    pruned = sta_cli.load(out)
    assert pruned.sta.r1 == 21 and pruned.labels == list(LABELS)
