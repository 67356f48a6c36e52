"""Memory that scales with the weights (issue 13): each weight held once while loading, pruning and
exporting, external ONNX data, and step progress. Tiny models; `bench/big_models.py` measures the
real sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file

import sta_cli
from sta_cli.io import checkpoints
from sta_cli.io.checkpoints import empty_parameters, read_weights, sharing_weights
from sta_cli.models import build_checked, videomae
from sta_cli.models.videomae import VideoMAE, VideoMAEConfig

CFG = VideoMAEConfig(
    embed_dim=32, depth=4, num_heads=2, mlp_dim=64, num_classes=3, image_size=32, patch_size=16, num_frames=8
)


def random_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in VideoMAE(CFG).state_dict().items()}


def test_parameters_are_the_loaded_tensors_and_buffers_are_computed():
    sd = random_sd()
    model = build_checked(lambda: VideoMAE(CFG), dict(sd), "tiny")
    for name, p in model.named_parameters():
        assert p.data_ptr() == sd[name].data_ptr(), name  # assigned, not copied
    reference = VideoMAE(CFG)  # built the ordinary way: its non-persistent sinusoid table
    assert not model.pos_embed.is_meta and torch.equal(model.pos_embed, reference.pos_embed)
    reference.load_state_dict(sd)
    x = torch.randn(2, 3, CFG.num_frames, CFG.image_size, CFG.image_size)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_empty_parameters_allocates_no_parameter_and_restores_torch():
    register = torch.nn.Module.register_parameter
    with empty_parameters():
        lin = torch.nn.Linear(4096, 4096)
    assert lin.weight.is_meta and lin.bias.is_meta
    assert torch.nn.Module.register_parameter is register
    assert not torch.nn.Linear(2, 2).weight.is_meta


def test_a_view_into_a_fused_tensor_becomes_its_own_storage():
    fused = torch.randn(6, 4)
    part = fused[:3]
    assert checkpoints.owned(part).untyped_storage().nbytes() == part.numel() * 4
    whole = torch.randn(3, 4)
    assert checkpoints.owned(whole) is whole


def test_sharing_weights_returns_the_callers_tensors_for_equal_bytes(tmp_path):
    sd = random_sd()
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    changed = dict(sd, **{"head.bias": sd["head.bias"] + 1})
    with sharing_weights(changed):
        read = read_weights(path)
    assert read["head.weight"].data_ptr() == changed["head.weight"].data_ptr()  # equal bytes: no copy
    assert read["head.bias"].data_ptr() != changed["head.bias"].data_ptr()  # different: what the file holds
    assert torch.equal(read["head.bias"], sd["head.bias"])
    assert read_weights(path)["head.weight"].data_ptr() != sd["head.weight"].data_ptr()  # outside: a plain read


def test_torch_files_are_mapped_not_read_and_still_weights_only(tmp_path):
    sd = random_sd()
    path = tmp_path / "model.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    read = read_weights(path)
    assert all(torch.equal(read[k], v) for k, v in sd.items())
    if Path("/proc/self/maps").is_file():  # Linux: the file is mapped while its tensors live
        assert str(path.resolve()) in Path("/proc/self/maps").read_text()
    legacy = tmp_path / "legacy.pth"  # the pre-zip format cannot be mapped: read as before
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_weights(legacy)["head.weight"], sd["head.weight"])


def test_fused_qkv_is_kept_without_a_copy():
    sd = random_sd()
    out = videomae.checkpoint_filter_fn(dict(sd))
    assert out["blocks.0.attn.qkv.weight"] is sd["blocks.0.attn.qkv.weight"]
    original = {k: v for k, v in sd.items() if not k.endswith("attn.qkv.bias")}  # original layout: q/v biases
    for i in range(CFG.depth):
        q, _, v = sd[f"blocks.{i}.attn.qkv.bias"].chunk(3)
        original[f"blocks.{i}.attn.q_bias"], original[f"blocks.{i}.attn.v_bias"] = q, v
    fused = videomae.checkpoint_filter_fn(original)
    bias = fused["blocks.1.attn.qkv.bias"]
    assert torch.equal(bias[: CFG.embed_dim], sd["blocks.1.attn.qkv.bias"][: CFG.embed_dim])
    assert not bias[CFG.embed_dim : 2 * CFG.embed_dim].any()  # no k bias in that layout
    assert fused["blocks.1.attn.qkv.weight"] is sd["blocks.1.attn.qkv.weight"]


def test_exporter_steps_become_progress_lines():
    from sta_cli.formats.onnx import _ExporterProgress

    said = []
    stream = _ExporterProgress(said.append)
    stream.write("[torch.onnx] Run decompositions...\n[torch.onnx] Run decompositions... ✅\n")
    stream.write("[torch.onnx] Translate the graph ")
    stream.write("into ONNX...\nsome other output\n[torch.onnx] Something new...\n")
    assert said == ["decomposing into core ATen ops", "translating the graph into ONNX", "ONNX exporter: Something new"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    folder.mkdir()
    save_file(random_sd(1), str(folder / "model.safetensors"))
    config = {"architecture": "videomae", "model": CFG.to_dict(), "labels": ["a", "b", "c"]}
    (folder / "config.json").write_text(json.dumps(config))
    out = folder.parent / "art"
    sta_cli.prune(str(folder), 2, out)
    return out


def test_weights_above_the_threshold_go_to_external_data(tmp_path, artifact, monkeypatch):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from sta_cli.formats import onnx as onnx_export
    from sta_cli.tasks.export import export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    said = []
    report = export(str(artifact), "onnx", tmp_path / "x", log=said.append)
    assert report.validation.ok and (tmp_path / "x" / "model.onnx.data").is_file()
    assert report.files.weights.endswith("model.onnx.data")
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert {"model.onnx", "model.onnx.data"} <= set(manifest["files"])
    graph = onnx.load(str(tmp_path / "x" / "model.onnx"), load_external_data=False)
    largest = max(graph.graph.initializer, key=lambda t: math.prod(t.dims))
    assert largest.data_location == onnx.TensorProto.EXTERNAL
    assert "saving model.onnx (weights in model.onnx.data)" in said
    assert "tracing the model (torch.export)" in said
    assert any(s.startswith("validating on random batch of 2: the exported model") for s in said)


def test_steps_say_what_each_step_cost_on_stderr_only(tmp_path, artifact):
    r = run_cli("prune", "--model", str(artifact), "--r1", "2", "-o", tmp_path / "p", "--json")
    assert r.exit_code == 0, r.stderr
    json.loads(r.stdout)  # stdout holds the report only
    done = [
        line for line in r.stderr.splitlines() if line.startswith("· loading weights") and " s, peak memory " in line
    ]
    assert done and done[0].endswith(" GB"), r.stderr


def test_sharing_compares_bits_not_values(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.tensor([0.0, float("nan"), 1.0])}, str(path))
    negative_zero = torch.tensor([-0.0, float("nan"), 1.0])  # torch.equal: unequal (NaN), yet 0.0 == -0.0
    with sharing_weights({"w": negative_zero}):
        read = read_weights(path)["w"]
    assert read.data_ptr() != negative_zero.data_ptr() and not read[0].signbit()  # the file's +0.0
    same = torch.tensor([0.0, float("nan"), 1.0])
    with sharing_weights({"w": same}):
        assert read_weights(path)["w"].data_ptr() == same.data_ptr()  # same bits, NaN included


@torch.no_grad()
def test_after_a_near_tie_swap_logits_are_held_to_atol_on_the_graphs_tokens(monkeypatch):
    """A runtime breaking every tie the other way keeps other tokens in later stages, so its logits
    differ from PyTorch's; PyTorch re-run on the graph's kept tokens must match them to atol, and a
    wrong logit still fails."""
    from test_near_ties import duplicated_clip, reverse_tie_break, run_validation, tied_model

    from sta_cli.errors import ValidationFailed
    from sta_cli.formats.graph import ExportModule
    from sta_cli.formats.validate import enforce
    from sta_cli.pruning import sta as sta_module

    model, x = tied_model(), duplicated_clip()
    with monkeypatch.context() as m:
        m.setattr(sta_module, "stable_argsort", reverse_tie_break)
        other = [t.clone() for t in ExportModule(model)(x)]
    assert (other[0] - ExportModule(model)(x)[0]).abs().max() > 1e-2  # other tokens, other logits
    result = run_validation(lambda t: other, model, x)
    enforce(result, allow_mismatch=False)
    close = [c.message for c in result.checks if c.message.startswith("all values close")]
    assert close and close[0].endswith("PyTorch run on the graph's kept tokens)"), close
    assert sta_module.forced_kept is None
    wrong = [other[0] + 1e-2, *other[1:]]
    with pytest.raises(ValidationFailed, match="values not close"):
        enforce(run_validation(lambda t: wrong, model, x), allow_mismatch=False)
