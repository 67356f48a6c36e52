"""Checkpoints as their owners saved them, and what sta may and may not assume about them.

Every layout test builds random weights in the exact key layout of a real release (tiny sizes) and
compares logits with a reference: transformers for VideoMAE, torchvision's own outputs (the Swin
fixtures) for Video Swin.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import (
    TINY_HF,
    check_error_text,
    populate_hf_cache,
    save_hub_folder,
    tiny_hf_model,
    tiny_swin_config,
    to_original_layout,
    write_swin,
)
from safetensors.torch import load_file

import sta_cli
from sta_cli.errors import StaError
from sta_cli.models import videomae, videoswin
from sta_cli.models.registry import ALIASES, kinetics400_labels, ssv2_labels

FIXTURES = Path(__file__).parent / "fixtures" / "swin"
TINY_ARCH = dict(
    num_heads=TINY_HF["num_attention_heads"],
    image_size=TINY_HF["image_size"],
    num_frames=TINY_HF["num_frames"],
    mean="0.485,0.456,0.406",
    std="0.229,0.224,0.225",
)
SWIN_ARCH = dict(image_size=48, num_frames=8, mean="0.485,0.456,0.406", std="0.229,0.224,0.225")


@torch.no_grad()
def hf_logits(hf_model, clip):
    return hf_model(pixel_values=clip.transpose(1, 2)).logits  # transformers takes (B, T, C, H, W)


def max_diff(model, clip, reference) -> float:
    with torch.no_grad():
        return (model(clip) - reference).abs().max().item()


def run_cli(*args, env=None, timeout=120):
    """The CLI in a subprocess when the environment matters (Hugging Face settings are read at import),
    else in-process. Either way: .returncode, .stdout, .stderr."""
    if env is not None:
        return subprocess.run(
            [sys.executable, "-m", "sta_cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
        )
    from typer.testing import CliRunner

    from sta_cli.cli import app

    r = CliRunner().invoke(app, list(map(str, args)))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def error_lines(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("·")]


# --- VideoMAE: head count of the converted ViT-S (issue 11, item 1) --------------------------------

SMALL = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=16,
    intermediate_size=1536,
    image_size=32,
    num_frames=8,
    num_labels=3,
)


@pytest.fixture(scope="module")
def small16(tmp_path_factory):
    """A ViT-S with the Hub's 16-head config (a transformers fine-tune really runs with 16) and a tiny input."""
    model = tiny_hf_model(seed=4, **SMALL)
    with torch.no_grad():  # peaked attention: the head split matters
        for layer in model.videomae.encoder.layer:
            layer.attention.attention.query.weight.mul_(6)
    folder = save_hub_folder(model, tmp_path_factory.mktemp("small") / "finetuned-small")
    return model, folder


@pytest.fixture
def small_clip():
    torch.manual_seed(5)
    return torch.randn(2, 3, SMALL["num_frames"], SMALL["image_size"], SMALL["image_size"])


def test_fine_tuned_small_keeps_its_16_heads(small16, small_clip):
    hf, folder = small16
    model = sta_cli.load(folder)
    assert model.cfg.num_heads == 16 and model.card.provenance["values"]["num_heads"]["from"] == "config"
    assert max_diff(model, small_clip, hf_logits(hf, small_clip)) <= 1e-5


def test_mcg_nju_small_runs_with_6_heads(tmp_path, small16, small_clip):
    hf, folder = small16
    files = {n: folder / n for n in ("config.json", "model.safetensors")}
    snap = populate_hf_cache(tmp_path / "hub", "MCG-NJU/videomae-small-finetuned-kinetics", files)
    model = sta_cli.load(snap)  # the cache path names the repo
    assert model.cfg.num_heads == 6
    prov = model.card.provenance["values"]["num_heads"]
    assert prov["from"] == "known checkpoint" and "6-head" in prov["why"]
    six = tiny_hf_model(seed=4, **{**SMALL, "num_attention_heads": 6})
    six.load_state_dict(hf.state_dict())
    assert max_diff(model, small_clip, hf_logits(six, small_clip)) <= 1e-5
    forced = sta_cli.load(snap, num_heads=16)  # --num-heads follows the config instead
    assert forced.cfg.num_heads == 16 and max_diff(forced, small_clip, hf_logits(hf, small_clip)) <= 1e-5


def test_head_note_is_one_log_line_not_a_warning(tmp_path, small16):
    _, folder = small16
    files = {n: folder / n for n in ("config.json", "model.safetensors")}
    populate_hf_cache(tmp_path / "hub", "MCG-NJU/videomae-small-finetuned-kinetics", files)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "home"),
    }
    r = run_cli("prune", "--model", "videomae-small", "--r1", "1", "-o", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "heads 6 (known checkpoint" in notes[0], r.stderr
    assert "Warning" not in r.stderr and ".py:" not in r.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (
        config["model"]["num_heads"] == 6 and config["provenance"]["values"]["num_heads"]["from"] == "known checkpoint"
    )


# --- original save formats (item 2) ----------------------------------------------------------------


def _save_model_format(sd) -> dict:
    """What VideoMAE's (and VideoMAE V2's) utils.save_model writes without DeepSpeed."""
    args = argparse.Namespace(
        model="vit_small_patch16_224",
        batch_size=8,
        lr=1e-3,
        nb_classes=5,
        data_path="/data/k400",
        layer_decay=0.75,
        dist_eval=True,
        drop_path=0.1,
        auto_resume=True,
        input_size=224,
    )
    optimizer = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
        "param_groups": [{"lr": 1e-3, "params": [0]}],
    }
    return {
        "model": sd,
        "optimizer": optimizer,
        "epoch": 29,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "args": args,
    }


def _deepspeed_format(sd) -> dict:
    """mp_rank_00_model_states.pt of a DeepSpeed run (VideoMAE's --enable_deepspeed)."""
    shapes = [OrderedDict((k, v.shape) for k, v in sd.items())]
    return {
        "module": sd,
        "buffer_names": [],
        "optimizer": None,
        "param_shapes": shapes,
        "lr_scheduler": None,
        "global_steps": 1200,
        "global_samples": 9600,
        "dp_world_size": 8,
        "mp_world_size": 1,
        "ds_config": {"train_batch_size": 64, "fp16": {"enabled": True}},
        "ds_version": "0.9.5",
        "epoch": 29,
    }


@pytest.mark.parametrize("fmt", ["save_model", "deepspeed", "plain"])
def test_original_save_formats(tmp_path, hf_model, clip, fmt):
    sd = to_original_layout(hf_model.state_dict())
    obj = {"save_model": _save_model_format, "deepspeed": _deepspeed_format, "plain": lambda s: s}[fmt](sd)
    torch.save(obj, tmp_path / "checkpoint-29.pth")
    model = sta_cli.load(tmp_path / "checkpoint-29.pth", **TINY_ARCH)
    assert max_diff(model, clip, hf_logits(hf_model, clip)) <= 1e-4  # eps 1e-6 (original) vs 1e-12 (transformers)


def test_unsafe_pickles_are_refused_with_a_clean_line(tmp_path, hf_model):
    sd = to_original_layout(hf_model.state_dict())
    obj = _save_model_format(sd)
    obj["args"].output_dir = Path("/tmp/out")  # a type the safe unpickler does not allow
    torch.save(obj, tmp_path / "paths.pth")
    with pytest.raises(StaError) as e:
        sta_cli.load(tmp_path / "paths.pth", **TINY_ARCH)
    message = str(e.value)
    assert "not plain weights" in message and "pathlib" in message and "refusing" in message
    assert "\x1b" not in message and "weights_only" not in message and "\n" not in message


@pytest.mark.parametrize(
    "family, weights, missing",
    [
        (videomae, {"patch_embed.proj.weight": torch.zeros(8, 3, 2, 4, 4), "layers.0.blocks.0.norm1.weight": torch.zeros(8)}, "'blocks.0.mlp.fc1.weight'"),
        (videoswin, {"patch_embed.proj.weight": torch.zeros(8, 3, 2, 16, 16), "blocks.0.norm1.weight": torch.zeros(8)}, "'layers.0.blocks.0.*'"),
    ],
)  # fmt: skip
def test_the_other_familys_weights_name_what_is_missing(family, weights, missing):
    """Video Swin weights read as VideoMAE and the other way round: the line names a key, not a Python error."""
    with pytest.raises(StaError) as e:
        family.shapes_from_state_dict(weights)
    assert str(e.value).endswith(f"cannot find {missing} in its weights")


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(os.urandom(4096).replace(b"PK", b"xx").lstrip(b"\x80") or b"x")
    r = run_cli("prune", "--model", path, "--r1", "1", "-o", tmp_path / "out")
    assert r.returncode == 1 and error_lines(r) == [
        f"sta: error: {path} is not a checkpoint: neither a PyTorch file (zip archive or pickle) nor safetensors"
    ], r.stderr
    assert not (tmp_path / "out").exists()


# --- labels (item 3) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "classes,first,last",
    [(400, "abseiling", "zumba"), (174, "Approaching something with your camera", "Wiping something off of something")],
)
def test_head_size_names_the_dataset(tmp_path, classes, first, last):
    hf = tiny_hf_model(seed=1, num_labels=classes)
    torch.save({"model": to_original_layout(hf.state_dict())}, tmp_path / "ft.pth")
    model = sta_cli.load(tmp_path / "ft.pth", **TINY_ARCH)
    assert model.labels[0] == first and model.labels[-1] == last and len(model.labels) == classes
    assert model.card.provenance["values"]["labels"]["from"] == "assumed"
    assert model.preprocessing["frame_stride"] == (2 if classes == 174 else 4)


def test_label_files():
    k400, ssv2 = kinetics400_labels(), ssv2_labels()
    assert len(k400) == len(set(k400)) == 400 and k400 == sorted(k400)  # the heads' index order is alphabetical
    assert len(ssv2) == len(set(ssv2)) == 174 and ssv2[0] == "Approaching something with your camera"
    assert ssv2[102] == "Putting number of something onto something" and ssv2[-1] == "Wiping something off of something"


# --- mmaction2 1.x (item 4) ------------------------------------------------------------------------


def to_mmaction2_vit(orig: dict[str, torch.Tensor], tokens: int, embed: int) -> dict:
    """VideoMAE original keys -> mmaction2 1.x `vit_mae.py` in a Recognizer3D (its own key names)."""
    out = {}
    for k, v in orig.items():
        k = k.replace("patch_embed.proj.", "patch_embed.projection.")
        k = k.replace(".mlp.fc1.", ".mlp.layers.0.0.").replace(".mlp.fc2.", ".mlp.layers.1.")
        out["cls_head.fc_cls." + k[5:] if k.startswith("head.") else "backbone." + k] = v
    out["backbone.pos_embed"] = videomae.sinusoid_table(tokens, embed)  # a persistent buffer there
    return {"meta": {"mmengine_version": "0.7.3", "epoch": 30, "dataset_meta": None}, "state_dict": out}


def test_mmaction2_vit_layout(tmp_path, hf_model, clip):
    n_tokens = (TINY_HF["num_frames"] // 2) * (TINY_HF["image_size"] // 16) ** 2
    ckpt = to_mmaction2_vit(to_original_layout(hf_model.state_dict()), n_tokens, TINY_HF["hidden_size"])
    assert (
        "backbone.blocks.0.mlp.layers.0.0.weight" in ckpt["state_dict"]
        and "backbone.patch_embed.projection.weight" in ckpt["state_dict"]
    )
    torch.save(ckpt, tmp_path / "vit.pth")
    model = sta_cli.load(tmp_path / "vit.pth", **TINY_ARCH)
    assert model.card.family == "videomae"
    assert max_diff(model, clip, hf_logits(hf_model, clip)) <= 1e-4
    with pytest.raises(StaError, match="position table has 64 tokens"):
        sta_cli.load(tmp_path / "vit.pth", **{**TINY_ARCH, "num_frames": 16})


def test_learned_position_table_is_refused(tmp_path, hf_model):
    """The original code's use_learnable_pos_emb saves a learned pos_embed; sta computes the sinusoid,
    so loading one would silently replace it. The sinusoid stored in bf16 still loads."""
    n_tokens = (TINY_HF["num_frames"] // 2) * (TINY_HF["image_size"] // 16) ** 2
    orig = to_original_layout(hf_model.state_dict())
    sinusoid = videomae.sinusoid_table(n_tokens, TINY_HF["hidden_size"])
    learned = sinusoid + 0.1 * torch.randn(sinusoid.shape, generator=torch.Generator().manual_seed(0))
    mmaction2 = to_mmaction2_vit(orig, n_tokens, TINY_HF["hidden_size"])
    mmaction2["state_dict"]["backbone.pos_embed"] = learned
    for name, ckpt in (("original", {"model": {**orig, "pos_embed": learned}}), ("mmaction2", mmaction2)):
        torch.save(ckpt, tmp_path / f"{name}.pth")
        with pytest.raises(StaError, match="learned position embedding"):
            sta_cli.load(tmp_path / f"{name}.pth", **TINY_ARCH)
    torch.save({"model": {**orig, "pos_embed": sinusoid.bfloat16()}}, tmp_path / "bf16.pth")
    sta_cli.load(tmp_path / "bf16.pth", **TINY_ARCH)


def to_mmaction2_swin(tv: dict[str, torch.Tensor]) -> dict:
    """torchvision swin3d keys -> mmaction2 1.x `swin.py` (final norm `backbone.norm3`, head `cls_head.fc_cls`)."""
    out = {}
    for k, v in tv.items():
        parts = k.split(".")
        if parts[0] == "features":
            f = int(parts[1])
            rest = ".".join(parts[3:]).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            k = (
                f"backbone.layers.{f // 2}.blocks.{parts[2]}.{rest}"
                if f % 2 == 0
                else f"backbone.layers.{f // 2}.downsample.{'.'.join(parts[2:])}"
            )
        elif parts[0] == "head":
            k = "cls_head.fc_cls." + parts[1]
        elif parts[0] == "norm":
            k = "backbone.norm3." + parts[1]
        else:
            k = "backbone." + k
        out[k] = v
    return out


def test_mmaction2_swin_layout(tmp_path):
    sd = to_mmaction2_swin(load_file(FIXTURES / "grid_torchvision.safetensors"))
    assert "backbone.norm3.weight" in sd and "backbone.norm.weight" not in sd
    torch.save({"meta": {"mmengine_version": "0.8.4", "epoch": 30}, "state_dict": sd}, tmp_path / "swin.pth")
    model = sta_cli.load(tmp_path / "swin.pth", **SWIN_ARCH)
    io = load_file(FIXTURES / "grid_io.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=1e-5, rtol=1e-5)


# --- Video Swin: SSv2 alias, preprocessing, unpruned export (items 5-7) ------------------------------


def test_swin_ssv2_alias_from_cache(tmp_path, monkeypatch):
    alias = ALIASES["videoswin-base-ssv2"]
    assert alias.source.endswith("/v1.0.4/swin_base_patch244_window1677_sthv2.pth")
    assert (alias.family, alias.size, alias.classes, alias.dataset) == ("videoswin", "B", 174, "ssv2")
    sd = load_file(FIXTURES / "grid_torchvision.safetensors")
    torch.manual_seed(0)
    sd["head.weight"], sd["head.bias"] = torch.randn(174, sd["head.weight"].shape[1]), torch.randn(174)
    monkeypatch.setenv("STA_CACHE", str(tmp_path))
    monkeypatch.setenv("STA_OFFLINE", "1")
    torch.save({"state_dict": to_mmaction2_swin(sd)}, tmp_path / "swin_base_patch244_window1677_sthv2.pth")
    model = sta_cli.load("videoswin-base-ssv2")
    assert model.labels == ssv2_labels()
    pre = model.preprocessing
    assert (pre["short_side"], pre["crop_size"], pre["num_frames"], pre["frame_stride"]) == (256, 224, 32, 2)


def test_released_swin_without_config_assumes_its_protocol():
    """A Swin-T-shaped state dict with no config: 32x224^2, short side 256, ImageNet mean/std, all recorded."""
    cfg = videoswin.VideoSwinConfig()  # Swin-T
    with torch.device("meta"):
        shapes = videoswin.shapes_from_state_dict(videoswin.VideoSwin(cfg).state_dict())
    assert videoswin.released(shapes) == "Video Swin-T"
    assert videoswin.released({**shapes, "embed_dim": 64}) is None


def test_unpruned_swin_exports_and_validates(tmp_path):
    from sta_cli.tasks.export import export

    weights = write_swin(tmp_path / "swin.safetensors", tiny_swin_config())  # no config: options tell the input
    report = export(
        weights,
        "onnx",
        tmp_path / "onnx",
        r1=0,
        arch=sta_cli.models.ArchOverrides(image_size=64, num_frames=4, mean=(0.5,) * 3, std=(0.5,) * 3),
    )
    checks = report.validation.checks
    assert all(c.ok for c in checks), [c.message for c in checks if not c.ok]
    assert report.validation.max_abs_diff < 1e-4 and list(report.graph.outputs) == ["logits"]


# --- VideoMAE V2 (item 8) --------------------------------------------------------------------------


def test_videomae_v2_layout_with_layer_scale(tmp_path, clip):
    """VideoMAE V2's modeling_finetune.py with init_values > 0 (gamma_1, gamma_2), saved by its utils.save_model.
    Reference: transformers with each gamma folded into the linear layer before it."""
    hf = tiny_hf_model(seed=2)
    sd = {k: v.clone() for k, v in to_original_layout(hf.state_dict()).items()}  # hf is changed below
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, layer in enumerate(hf.videomae.encoder.layer):
            g1, g2 = (
                torch.rand(TINY_HF["hidden_size"], generator=gen) + 0.5,
                torch.rand(TINY_HF["hidden_size"], generator=gen) + 0.5,
            )
            sd[f"blocks.{i}.gamma_1"], sd[f"blocks.{i}.gamma_2"] = g1, g2
            for lin, g in ((layer.attention.output.dense, g1), (layer.output.dense, g2)):
                lin.weight.mul_(g[:, None])
                lin.bias.mul_(g)
    torch.save(_save_model_format(sd), tmp_path / "vit_g_k400_ft.pth")
    model = sta_cli.load(tmp_path / "vit_g_k400_ft.pth", **TINY_ARCH)
    assert model.cfg.layer_scale
    assert max_diff(model, clip, hf_logits(hf, clip)) <= 1e-4
    sd["blocks.0.attn.scale"] = torch.zeros(4, 1, 1)  # cos_attn=True
    torch.save({"model": sd}, tmp_path / "cos.pth")
    with pytest.raises(StaError, match="cosine attention"):
        sta_cli.load(tmp_path / "cos.pth", **TINY_ARCH)


def test_videomae_v2_patch14(tmp_path):
    """ViT-g's geometry at tiny width: patch 14, so 16x16 tokens per frame at 224 px (here 2x2 at 28 px)."""
    hf = tiny_hf_model(seed=3, patch_size=14, image_size=28, num_frames=4)
    torch.save({"module": to_original_layout(hf.state_dict())}, tmp_path / "g.pth")
    model = sta_cli.load(tmp_path / "g.pth", **{**TINY_ARCH, "image_size": 28, "num_frames": 4})
    assert model.cfg.patch_size == 14 and model.cfg.grid == (2, 2, 2)
    x = torch.randn(1, 3, 4, 28, 28)
    assert max_diff(model, x, hf_logits(hf, x)) <= 1e-4


def test_vit_g_is_a_released_size_and_its_flops():
    shapes = dict(
        embed_dim=1408,
        depth=40,
        mlp_dim=6144,
        num_classes=400,
        patch_size=14,
        tubelet_size=2,
        in_chans=3,
        qkv_bias=True,
        use_mean_pooling=True,
        layer_scale=False,
    )
    assert videomae.released(shapes) == ("VideoMAE V2 ViT-g", 16)
    from sta_cli.flops import gflops
    from sta_cli.pruning import STAConfig

    cfg = videomae.VideoMAEConfig(**{**shapes, "num_heads": 16, "image_size": 224, "num_frames": 16})
    assert cfg.grid == (8, 16, 16)
    with torch.device("meta"):
        model = videomae.VideoMAE(cfg)
    got = []
    for r1 in (0, 32, 48, 64):
        model.set_sta(STAConfig(r1=r1))
        got.append(gflops(model))
    assert got[0] > got[1] > got[2] > got[3] and 2400 < got[0] < 2700, got


@pytest.mark.parametrize("name,size", [("videomaev2-small", "S"), ("videomaev2-base", "B")])
def test_videomae_v2_aliases(name, size):
    a = ALIASES[name]
    assert a.family == "videomae" and a.size == size and a.classes == 400 and a.frame_stride == 4
    assert a.source.startswith("https://download.openmmlab.com/mmaction/v1.0/recognition/videomaev2/")
    assert a.source.endswith(".pth") and "-dist-k710-pre_16x4x1_kinetics-400" in a.source


# --- guessed architecture, absurd configs, config tracebacks (issue 9) --------------------------------


def test_weights_alone_need_what_they_cannot_tell(tmp_path):
    from sta_cli.demo import DEMO_DIR

    shutil.copy(DEMO_DIR / "model.safetensors", tmp_path / "model.safetensors")
    r = run_cli("prune", "--model", tmp_path, "--r1", "4", "-o", tmp_path / "out")
    assert r.returncode == 1 and len(error_lines(r)) == 1, r.stderr
    assert "num_heads, image_size, num_frames, mean, std" in r.stderr and "--num-heads" in r.stderr
    demo = json.loads((DEMO_DIR / "config.json").read_text())
    pre = demo["preprocessing"]
    arch = [
        "--num-heads",
        demo["model"]["num_heads"],
        "--image-size",
        demo["model"]["image_size"],
        "--num-frames",
        demo["model"]["num_frames"],
        "--mean",
        ",".join(map(str, pre["mean"])),
        "--std",
        ",".join(map(str, pre["std"])),
    ]
    r = run_cli("prune", "--model", tmp_path, "--r1", "4", "-o", tmp_path / "out", *arch)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "heads 2 (option)" in notes[0] and "input size 64 (option)" in notes[0], r.stderr
    prov = json.loads((tmp_path / "out" / "config.json").read_text())["provenance"]["values"]
    assert prov["num_heads"] == {"value": 2, "from": "option"} and prov["std"]["value"] == pre["std"]
    x = torch.randn(1, 3, 16, 64, 64)
    assert max_diff(sta_cli.load(tmp_path / "out", r1=0), x, sta_cli.load("demo", r1=0)(x)) == 0


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"hidden_size": 2**26}, "config says hidden_size 67108864 but the weights have 48"),
        ({"image_size": 2**20}, "not a real VideoMAE input size"),
        ({"hidden_size": "abc"}, "hidden_size must be a positive integer, got 'abc'"),
        ({"num_frames": -8}, "num_frames must be a positive integer, got -8"),
    ],
)
def test_bad_configs_fail_before_allocating(tmp_path, hub_folder, change, fragment):
    folder = tmp_path / "m"
    shutil.copytree(hub_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    t0 = time.perf_counter()
    with pytest.raises(StaError, match=fragment):
        sta_cli.load(folder)
    assert time.perf_counter() - t0 < 10


def test_config_that_is_not_an_object(tmp_path, hub_folder):
    folder = tmp_path / "m"
    shutil.copytree(hub_folder, folder)
    (folder / "config.json").write_text("[1, 2, 3]")
    r = run_cli("prune", "--model", folder, "--r1", "1", "-o", tmp_path / "out")
    assert r.returncode == 1 and error_lines(r) == [
        f"sta: error: {folder / 'config.json'} is not a JSON object (it holds a list)"
    ]


def test_huge_image_size_option_is_refused_cleanly(tmp_path, hub_folder):
    r = run_cli("prune", "--model", hub_folder, "--image-size", 2**20, "--r1", "1", "-o", tmp_path / "out")
    assert r.returncode == 1 and len(error_lines(r)) == 1 and "not a real VideoMAE input size" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_bad_option_values():
    for kwargs, fragment in [
        ({"mean": "1,2"}, "mean must be three finite numbers"),
        ({"std": "0,1,1"}, "above 0"),
        ({"num_heads": 0}, "num-heads must be a positive integer"),
    ]:
        with pytest.raises(StaError, match=fragment):
            sta_cli.load("demo", **kwargs)
    with pytest.raises(StaError, match="does not apply to Video Swin"):
        sta_cli.load(FIXTURES / "grid_torchvision.safetensors", num_heads=3, **SWIN_ARCH)


def test_arch_options_on_every_command():
    for command in ("prune", "export", "profile", "eval"):
        r = run_cli(command, "--help")
        assert r.returncode == 0
        for option in ("--num-heads", "--image-size", "--num-frames", "--mean", "--std"):
            assert option in r.stdout, (command, option)


# --- network ---------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_hub_fails_fast(tmp_path, hub_folder):
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "home"),
    }
    env.pop("HF_HUB_OFFLINE", None)
    t0 = time.perf_counter()
    r = run_cli("prune", "--model", "no-such/repo", "--r1", "1", "-o", tmp_path / "out", env=env)
    # The old behaviour retried for about two minutes; a connect timeout answers in seconds (a subprocess
    # that imports torch takes most of them, more on a loaded machine: hence the wide bound).
    assert time.perf_counter() - t0 < 75
    lines = error_lines(r)
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert (
        "the Hub is unreachable" in lines[0]
        and "HF_HUB_OFFLINE=1" in lines[0]
        and "not found on the Hub" not in lines[0]
    )
    # The same repo complete in the cache is used, with one note.
    populate_hf_cache(
        tmp_path / "hub", "someone/cached", {n: hub_folder / n for n in ("config.json", "model.safetensors")}
    )
    r = run_cli("prune", "--model", "someone/cached", "--r1", "1", "-o", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stderr
    assert "the Hub is unreachable" in r.stderr and "using someone/cached from the local cache" in r.stderr


def test_options_on_an_artifact_follow_into_preprocessing(tmp_path):
    model = sta_cli.load("demo", image_size=32, num_frames=8, mean=(0.4, 0.4, 0.4))
    pre = model.preprocessing
    assert (model.cfg.image_size, model.cfg.num_frames) == (32, 8)
    assert (pre["crop_size"], pre["short_side"], pre["num_frames"], pre["mean"]) == (32, 32, 8, [0.4, 0.4, 0.4])
    assert model.card.provenance["values"]["image_size"] == {"value": 32, "from": "option"}


def test_first_token_pooling_is_not_pruned(tmp_path, clip):
    """use_mean_pooling false: the head reads x[:, 0] (transformers, the original code), a patch token
    STA may drop; unpruned it loads and matches transformers, pruned it is refused."""
    model = tiny_hf_model(seed=2, use_mean_pooling=False)
    model.save_pretrained(tmp_path / "first-token")
    unpruned = sta_cli.load(tmp_path / "first-token", r1=0)
    assert max_diff(unpruned, clip, hf_logits(model, clip)) <= 1e-4
    with pytest.raises(StaError, match="first patch token"):
        sta_cli.load(tmp_path / "first-token", r1=8)
    r = run_cli("prune", "--model", tmp_path / "first-token", "--r1", 8, "-o", tmp_path / "out")
    assert r.returncode != 0
    check_error_text(r.stderr, "first patch token")
    assert not (tmp_path / "out").exists()


def test_preprocessor_crop_must_match_the_model(tmp_path, hub_folder):
    """A preprocessor_config.json whose crop disagrees with config.json's image_size is refused with
    one line (it crashed in the forward, or blamed the clip); --image-size decides."""
    folder = tmp_path / "crop32"
    shutil.copytree(hub_folder, folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"crop_size": {"height": 32, "width": 32}}))
    with pytest.raises(StaError, match="crops 32px frames.*takes 64px"):
        sta_cli.load(folder)
    model = sta_cli.load(folder, image_size=64)
    assert model.preprocessing["crop_size"] == 64


def test_config_and_shards_that_would_load_wrong_weights(tmp_path, hf_model, hub_folder):
    """hidden_act other than gelu (sta runs exact GELU), and a stale shard listed in the index that
    holds keys another shard holds: refused, never a silent choice."""
    relu = tmp_path / "relu"
    shutil.copytree(hub_folder, relu)
    config = json.loads((relu / "config.json").read_text())
    (relu / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(StaError, match="hidden_act 'relu' is not supported"):
        sta_cli.load(relu)
    sharded = tmp_path / "sharded"
    hf_model.save_pretrained(sharded, max_shard_size="20KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    shutil.copy(sharded / first, sharded / "stale.safetensors")
    sta_cli.load(sharded)  # the shards as saved load
    index["weight_map"]["stale.only"] = "stale.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(StaError, match="again, which an earlier weights file already holds"):
        sta_cli.load(sharded)


def test_an_index_that_leaves_out_a_shard_is_refused(tmp_path, hf_model):
    """A weight_map missing the last shard's keys (the head, here): transformers would leave them
    random; sta said "no classification head: a pre-training checkpoint?". Now the index is named."""
    folder = tmp_path / "sharded"
    hf_model.save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    last = max(index["weight_map"].values())
    index["weight_map"] = {k: f for k, f in index["weight_map"].items() if f != last}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    total = int(last.split("-of-")[1].split(".")[0])
    with pytest.raises(StaError, match=f"lists {total - 1} of the {total} shards .*an incomplete index"):
        sta_cli.load(folder)


def test_do_normalize_false_feeds_unnormalised_pixels(tmp_path, hub_folder):
    """transformers' processor with do_normalize false skips mean/std: so does sta (an option still wins)."""
    folder = tmp_path / "raw"
    shutil.copytree(hub_folder, folder)
    pre = {"do_normalize": False, "image_mean": [0.45, 0.45, 0.45], "image_std": [0.22, 0.22, 0.22]}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    p = sta_cli.load(folder).preprocessing
    assert (p["mean"], p["std"]) == ([0.0] * 3, [1.0] * 3)
    p = sta_cli.load(folder, mean="0.5,0.5,0.5").preprocessing
    assert p["mean"] == [0.5] * 3
    (folder / "preprocessor_config.json").write_text(json.dumps({**pre, "do_normalize": True}))
    assert sta_cli.load(folder).preprocessing["mean"] == [0.45] * 3


@pytest.mark.parametrize("pre", [{"do_rescale": False}, {"rescale_factor": 1 / 127.5}, {}])
def test_rescaling_follows_transformers_processor(tmp_path, hub_folder, pre):
    """do_rescale false feeds 0..255 pixels to mean/std, rescale_factor scales them: sta's input equals
    what transformers' VideoMAEImageProcessor makes of the same frames (it used 0..1 whatever the file said)."""
    from transformers import VideoMAEImageProcessor

    from sta_cli.io.video import standardise

    folder = tmp_path / "rescale"
    shutil.copytree(hub_folder, folder)
    pre = {"image_mean": [0.45, 0.4, 0.35], "image_std": [0.2, 0.25, 0.3], **pre}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    frames = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    processor = VideoMAEImageProcessor(**pre, do_resize=False, do_center_crop=False)
    expected = processor(list(frames.numpy()), return_tensors="pt")["pixel_values"][0].transpose(0, 1)
    ours = standardise(frames.permute(3, 0, 1, 2).float(), sta_cli.load(folder).preprocessing)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)


def test_a_nonsense_rescale_factor_is_refused(tmp_path, hub_folder):
    folder = tmp_path / "rescale"
    shutil.copytree(hub_folder, folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"rescale_factor": -1}))
    with pytest.raises(StaError, match="rescale_factor -1 is not a positive number"):
        sta_cli.load(folder)


def test_a_default_the_weights_contradict_is_called_a_default(tmp_path, hub_folder):
    folder = tmp_path / "nolabels"
    shutil.copytree(hub_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("num_labels", "id2label", "label2id")}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StaError, match=r"the config gives no num_labels \(default 400\) but the weights have 5"):
        sta_cli.load(folder)


def test_an_encoder_without_head_is_named(tmp_path):
    """transformers' VideoMAEModel saves the encoder alone (no "videomae." prefix, no classifier)."""
    from transformers import VideoMAEConfig, VideoMAEModel

    hf = {k: v for k, v in TINY_HF.items() if k != "num_labels"}
    VideoMAEModel(VideoMAEConfig(**hf)).save_pretrained(tmp_path / "encoder")
    with pytest.raises(StaError, match="VideoMAEModel .the encoder without a classification head"):
        sta_cli.load(tmp_path / "encoder")
