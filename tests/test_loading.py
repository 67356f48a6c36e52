"""Checkpoint loading: our VideoMAE equals transformers' on the same weights, in every layout."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_HF, populate_hf_cache, save_hub_folder, tiny_hf_model, to_original_layout

import sta_cli
from sta_cli.errors import StaError


@torch.no_grad()
def reference_logits(hf_model, clip):
    return hf_model(pixel_values=clip.transpose(1, 2)).logits  # transformers takes (B, T, C, H, W)


@torch.no_grad()
@pytest.mark.parametrize("fmt,legacy", [("safetensors", False), ("safetensors", True), ("bin", False), ("bin", True)])
def test_hub_layout_matches_transformers(tmp_path, hf_model, clip, fmt, legacy):
    folder = save_hub_folder(hf_model, tmp_path / "m", fmt=fmt, legacy_bias_names=legacy)
    model = sta_cli.load(folder)
    assert (model(clip) - reference_logits(hf_model, clip)).abs().max() <= 1e-4
    assert model.labels == [f"action_{i}" for i in range(TINY_HF["num_labels"])]
    assert model.cfg.norm_eps == 1e-12 and model.cfg.fc_norm_eps == 1e-5


@torch.no_grad()
@pytest.mark.parametrize("wrapper", [None, "module", "model"])
def test_original_pth_layout_matches_transformers(tmp_path, hf_model, clip, wrapper):
    sd = to_original_layout(hf_model.state_dict())
    path = tmp_path / "checkpoint.pth"
    torch.save({wrapper: sd, "epoch": 3} if wrapper else sd, path)
    with pytest.raises(StaError, match="not a released architecture.*num_heads, image_size, num_frames, mean, std"):
        sta_cli.load(path)  # no config and not a released size: nothing may be guessed
    arch = dict(
        num_heads=TINY_HF["num_attention_heads"],
        image_size=TINY_HF["image_size"],
        num_frames=TINY_HF["num_frames"],
        mean="0.485,0.456,0.406",
        std=(0.229, 0.224, 0.225),
    )
    model = sta_cli.load(path, **arch)
    assert model.cfg.depth == TINY_HF["num_hidden_layers"] and model.cfg.embed_dim == TINY_HF["hidden_size"]
    assert model.card.provenance["values"]["num_heads"] == {"value": 4, "from": "option"}
    assert (model(clip) - reference_logits(hf_model, clip)).abs().max() <= 1e-4
    # ... or the config next to the weights.
    (tmp_path / "f").mkdir()
    torch.save(sd, tmp_path / "f" / "checkpoint.pth")
    hf_model.config.save_pretrained(tmp_path / "f")
    model = sta_cli.load(tmp_path / "f")
    assert (model(clip) - reference_logits(hf_model, clip)).abs().max() <= 1e-4


def test_hub_config_heads_are_trusted():
    from sta_cli.models.videomae import VideoMAEConfig

    cfg = VideoMAEConfig.from_hf(
        {
            "hidden_size": 384,
            "num_hidden_layers": 12,
            "num_attention_heads": 16,
            "intermediate_size": 1536,
            "qv_bias": True,
        }
    )
    assert cfg.num_heads == 16  # only the known converted checkpoints are corrected (models/build.py)
    assert VideoMAEConfig.from_hf({"hidden_size": 768, "qkv_bias": False}).qkv_bias is False


def test_r1_zero_is_unpruned_and_artifact_keeps_settings(tmp_path, hub_folder, clip):
    plain = sta_cli.load(hub_folder)
    assert plain.sta.r1 == 0 and plain.stages == []
    report = sta_cli.prune(hub_folder, 4, tmp_path / "art")
    pruned = sta_cli.load(tmp_path / "art")
    assert pruned.sta.r1 == 4 and report.sta["r1"] == 4
    with torch.no_grad():
        assert torch.equal(pruned(clip), sta_cli.load(hub_folder, r1=4)(clip))
        assert torch.equal(sta_cli.load(tmp_path / "art", r1=0)(clip), plain(clip))


def _run(args, env):
    return subprocess.run(
        [sys.executable, "-c", "import sys; from sta_cli.cli import app; app()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def offline_cache(tmp_path, hub_folder):
    cache = tmp_path / "hf-cache"
    files = {"config.json": hub_folder / "config.json", "model.safetensors": hub_folder / "model.safetensors"}
    populate_hf_cache(cache, "MCG-NJU/videomae-base-finetuned-kinetics", files)
    populate_hf_cache(cache, "someone/tiny-videomae", files)
    populate_hf_cache(cache, "someone/tagged-videomae", files, revision="v1.0")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    return cache, env


def test_alias_and_repo_id_resolve_from_offline_cache(tmp_path, offline_cache):
    _, env = offline_cache
    for spec in ("videomae-base", "someone/tiny-videomae"):
        out = tmp_path / f"out-{spec.replace('/', '_')}"
        r = _run(["prune", "--model", spec, "--r1", "4", "-o", str(out), "--json"], env)
        assert r.returncode == 0, r.stderr
        assert (out / "model.safetensors").is_file() and (out / "sta.json").is_file()
    code = (
        "import sta_cli, torch; m = sta_cli.load('videomae-base', r1=4); "
        "m(torch.zeros(1, 3, 8, 64, 64)); print([p.shape[1] for p in m.kept_positions])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[48, 40, 36]"  # 4 slices x 16 tokens, r=4 per group: 64-16, -8, -4
    # --revision picks the cached ref; without it, main is not cached.
    r = _run(
        ["prune", "--model", "someone/tagged-videomae", "--revision", "v1.0", "--r1", "2", "-o", str(tmp_path / "t")],
        env,
    )
    assert r.returncode == 0, r.stderr
    r = _run(["prune", "--model", "someone/tagged-videomae", "--r1", "2", "-o", str(tmp_path / "u")], env)
    assert r.returncode != 0 and "not found in the Hugging Face cache" in r.stderr


def test_offline_without_files_names_what_is_missing(tmp_path, offline_cache):
    _, env = offline_cache
    r = _run(["prune", "--model", "videomae-large", "--r1", "4", "-o", str(tmp_path / "x")], env)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("sta: error:")]
    assert len(lines) == 1, r.stderr
    assert "MCG-NJU/videomae-large-finetuned-kinetics" in lines[0] and "config.json" in lines[0]
    assert "HF_HUB_OFFLINE" in lines[0]
    assert not (tmp_path / "x").exists()


def test_sharded_safetensors_folder(tmp_path, hf_model, clip):
    import json

    from safetensors.torch import save_file

    folder = tmp_path / "sharded"
    folder.mkdir()
    hf_model.config.save_pretrained(folder)
    sd = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    keys = sorted(sd)
    half = len(keys) // 2
    weight_map = {}
    for name, part in (
        ("model-00001-of-00002.safetensors", keys[:half]),
        ("model-00002-of-00002.safetensors", keys[half:]),
    ):
        save_file({k: sd[k] for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with torch.no_grad():
        assert (sta_cli.load(folder)(clip) - reference_logits(hf_model, clip)).abs().max() <= 1e-4


def test_loader_errors_name_the_problem(tmp_path, hf_model):
    sd = to_original_layout(hf_model.state_dict())
    del sd["blocks.2.mlp.fc1.bias"]
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(StaError, match=r"unknown keys blocks\.0\.attn\.extra.*missing keys blocks\.2\.mlp\.fc1\.bias"):
        sta_cli.load(
            tmp_path / "bad.pth", num_heads=4, image_size=64, num_frames=8, mean="0.5,0.5,0.5", std="0.5,0.5,0.5"
        )
    folder = save_hub_folder(tiny_hf_model(hidden_size=64), tmp_path / "wide")
    (folder / "config.json").write_text(
        (folder / "config.json").read_text().replace('"hidden_size": 64', '"hidden_size": 32')
    )
    with pytest.raises(StaError, match="config says hidden_size 32 but the weights have 64"):
        sta_cli.load(folder)
