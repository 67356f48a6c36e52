"""Shared fixtures: tiny randomly initialised VideoMAE and Video Swin checkpoints in the layouts users have."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

TINY_HF = dict(
    hidden_size=48,
    num_hidden_layers=6,
    num_attention_heads=4,
    intermediate_size=96,
    image_size=64,
    patch_size=16,
    num_frames=8,
    tubelet_size=2,
    num_labels=5,
)


# A tiny Video Swin for export tests: 4 frames of 64^2, stage grids (2,16,16) ... (2,2,2), 4^2 windows.
TINY_SWIN = dict(
    embed_dim=8,
    depths=(1, 1, 1, 1),
    num_heads=(1, 2, 2, 4),
    window_size=(2, 4, 4),
    num_frames=4,
    image_size=64,
    num_classes=5,
)


def tiny_swin_config(**overrides):
    """TINY_SWIN as a VideoSwinConfig, with any field overridden."""
    from sta_cli.models.videoswin import VideoSwinConfig

    return VideoSwinConfig(**{**TINY_SWIN, **overrides})


def reference_index(window: tuple[int, int, int]) -> torch.Tensor:
    """The (vol, vol) relative_position_index torchvision and the original release register, written
    as they compute it (relative coordinates, shifted non-negative, mixed-radix), not with sta's code."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    for axis, w in enumerate(window):
        rel[:, :, axis] += w - 1
    rel[:, :, 0] *= (2 * window[1] - 1) * (2 * window[2] - 1)
    rel[:, :, 1] *= 2 * window[2] - 1
    return rel.sum(-1)


def write_swin(path: Path, model_or_config, labels: list[str] | None = None, seed: int = 0) -> Path:
    """A Video Swin as users have it on disk: a folder `path` with config.json (sta's layout, with
    `labels` if given) and model.safetensors, or, for a `path` ending in .safetensors, the weights
    file alone, with the relative_position_index buffers torchvision and the original release save
    (they tell the window). A VideoSwinConfig gets random weights (seeded); a model is written as it is."""
    from safetensors.torch import save_file

    from sta_cli.models.videoswin import VideoSwin

    if isinstance(model_or_config, torch.nn.Module):
        model = model_or_config
    else:
        torch.manual_seed(seed)
        model = VideoSwin(model_or_config)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    if path.suffix == ".safetensors":
        index = reference_index(model.cfg.window_size)
        for i, depth in enumerate(model.cfg.depths):
            weights.update({f"layers.{i}.blocks.{j}.attn.relative_position_index": index.clone() for j in range(depth)})
        save_file(weights, path)
        return path
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, path / "model.safetensors")
    config = {"architecture": "videoswin", "model": model.cfg.to_dict(), **({"labels": labels} if labels else {})}
    (path / "config.json").write_text(json.dumps(config))
    return path


def tiny_hf_model(seed: int = 0, **overrides):
    """A transformers VideoMAEForVideoClassification with random weights and non-zero biases."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(seed)
    cfg = VideoMAEConfig(**{**TINY_HF, **overrides})
    cfg.id2label = {i: f"action_{i}" for i in range(cfg.num_labels)}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    model = VideoMAEForVideoClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)  # non-zero q/v biases catch a loader that drops them
    return model


def to_original_layout(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original VideoMAE (.pth) key layout, written independently of sta's loader."""
    out = {}
    n_layers = 1 + max(int(k.split(".")[3]) for k in hf_sd if k.startswith("videomae.encoder.layer."))
    out["patch_embed.proj.weight"] = hf_sd["videomae.embeddings.patch_embeddings.projection.weight"]
    out["patch_embed.proj.bias"] = hf_sd["videomae.embeddings.patch_embeddings.projection.bias"]
    for i in range(n_layers):
        p = f"videomae.encoder.layer.{i}."
        a = p + "attention.attention."
        out[f"blocks.{i}.norm1.weight"] = hf_sd[p + "layernorm_before.weight"]
        out[f"blocks.{i}.norm1.bias"] = hf_sd[p + "layernorm_before.bias"]
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([hf_sd[a + f"{n}.weight"] for n in ("query", "key", "value")])
        out[f"blocks.{i}.attn.q_bias"] = hf_sd[a + "query.bias"]
        out[f"blocks.{i}.attn.v_bias"] = hf_sd[a + "value.bias"]
        out[f"blocks.{i}.attn.proj.weight"] = hf_sd[p + "attention.output.dense.weight"]
        out[f"blocks.{i}.attn.proj.bias"] = hf_sd[p + "attention.output.dense.bias"]
        out[f"blocks.{i}.norm2.weight"] = hf_sd[p + "layernorm_after.weight"]
        out[f"blocks.{i}.norm2.bias"] = hf_sd[p + "layernorm_after.bias"]
        out[f"blocks.{i}.mlp.fc1.weight"] = hf_sd[p + "intermediate.dense.weight"]
        out[f"blocks.{i}.mlp.fc1.bias"] = hf_sd[p + "intermediate.dense.bias"]
        out[f"blocks.{i}.mlp.fc2.weight"] = hf_sd[p + "output.dense.weight"]
        out[f"blocks.{i}.mlp.fc2.bias"] = hf_sd[p + "output.dense.bias"]
    out["fc_norm.weight"], out["fc_norm.bias"] = hf_sd["fc_norm.weight"], hf_sd["fc_norm.bias"]
    out["head.weight"], out["head.bias"] = hf_sd["classifier.weight"], hf_sd["classifier.bias"]
    return out


def with_legacy_bias_names(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers v4 checkpoints name the biases q_bias / v_bias (as the Hub files do)."""
    out = {}
    for k, v in hf_sd.items():
        k = k.replace("attention.attention.query.bias", "attention.attention.q_bias")
        k = k.replace("attention.attention.value.bias", "attention.attention.v_bias")
        out[k] = v
    return out


def save_hub_folder(model, folder: Path, fmt: str = "safetensors", legacy_bias_names: bool = False) -> Path:
    """config.json + model.safetensors | pytorch_model.bin, as on the Hub."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if legacy_bias_names:
        sd = with_legacy_bias_names(sd)
    if fmt == "safetensors":
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    return folder


def populate_hf_cache(cache: Path, repo_id: str, files: dict[str, Path], revision: str = "main") -> Path:
    """Lay files out exactly as huggingface_hub's cache does (blobs, snapshots, refs)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for i, (name, src) in enumerate(files.items()):
        blob = repo / "blobs" / f"blob{i:04d}"
        shutil.copy(src, blob)
        (snap / name).symlink_to(Path("../..") / "blobs" / blob.name)
    return snap


@pytest.fixture(scope="session")
def hf_model():
    return tiny_hf_model()


@pytest.fixture(scope="session")
def hub_folder(tmp_path_factory, hf_model) -> Path:
    return save_hub_folder(hf_model, tmp_path_factory.mktemp("hub") / "tiny-videomae")


@pytest.fixture
def clip() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, TINY_HF["num_frames"], TINY_HF["image_size"], TINY_HF["image_size"])


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# --- the CLI, as users run it --------------------------------------------------------------------


def run_cli(*args, cwd: Path | None = None, env: dict | None = None):
    """`sta ARGS` in-process (Typer's runner) from `cwd`; stdout and stderr kept apart."""
    import os

    from typer.testing import CliRunner

    from sta_cli.cli import app

    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args], env=env)
    finally:
        os.chdir(old)


def assert_one_line_error(result, *fragments):
    """A non-zero exit and one `sta: error:` line, last on stderr, holding `fragments`; before it at
    most sta's own log lines (`· step`, `command: note`), never a traceback or a Python warning."""
    assert result.exit_code != 0, result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    check_error_text(result.stderr, *fragments)


def check_error_text(stderr: str, *fragments) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("sta: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert "Traceback" not in stderr and "Warning:" not in stderr, stderr
    for f in fragments:
        assert f in errors[0], errors[0]
