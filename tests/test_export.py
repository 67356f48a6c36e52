"""`sta export`: graph contract, parity with PyTorch in ONNX Runtime / TorchScript / torch.export,
fp16, tie-breaking, and bad input that must fail cleanly and leave nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli, tiny_swin_config, write_swin

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import sta_cli  # noqa: E402
from sta_cli.io.video import synthetic_clip  # noqa: E402
from sta_cli.models.videomae import VideoMAE, VideoMAEConfig  # noqa: E402
from sta_cli.pruning import STAConfig, Stage, stage_keep_indices  # noqa: E402
from sta_cli.pruning.sta import keep_lowest  # noqa: E402
from sta_cli.tasks.export import export  # noqa: E402

CFG = VideoMAEConfig(
    embed_dim=64, depth=6, num_heads=4, mlp_dim=128, num_classes=7, image_size=64, patch_size=16, num_frames=8
)
TOKENS = [64, 48, 40, 36]  # r1 = 4: 4 x 16 tokens -> drop 4 per group at 4, 2, 1 groups
FORBIDDEN = {"NonZero", "Loop", "If", "Scan", "Scatter", "ScatterND", "ScatterElements"}


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny VideoMAE with random weights and non-zero biases, in sta's own folder layout."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = VideoMAE(CFG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"architecture": "videomae", "model": CFG.to_dict(), "labels": [f"action_{i}" for i in range(7)]}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, checkpoint) -> Path:
    """`sta prune --model X --r1 4` then `sta export --format onnx --json`, exactly as typed, in one folder."""
    cwd = tmp_path_factory.mktemp("work")
    r = run_cli("prune", "--model", checkpoint, "--r1", 4, cwd=cwd)
    assert r.exit_code == 0, r.stderr
    return cwd


@pytest.fixture(scope="module")
def onnx_run(workdir):
    r = run_cli("export", "--format", "onnx", "--json", cwd=workdir)
    assert r.exit_code == 0, r.stderr
    assert "using the artifact in ./tiny-sta-r4" in r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def artifact(workdir, onnx_run) -> Path:
    return workdir / "tiny-sta-r4"


# --- the ONNX graph ---------------------------------------------------------------------------


def test_onnx_lands_in_the_artifact_with_config(onnx_run, artifact):
    assert onnx_run["ok"] and onnx_run["validation"]["ok"]
    assert Path(onnx_run["files"]["model"]).name == "model.onnx"
    assert sorted(p.name for p in artifact.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.onnx",
        "model.safetensors",
        "report.json",
        "sta.json",
    ]
    config = json.loads((artifact / "config.json").read_text())
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["format"] == "sta-artifact" and set(manifest["files"]) >= {
        "model.onnx",
        "config.json",
        "model.safetensors",
    }
    assert config["labels"][3] == "action_3" and config["preprocessing"]["num_frames"] == 8
    assert config["sta"]["r1"] == 4 and config["sta"]["tokens_per_stage"] == TOKENS
    assert config["exports"]["onnx"]["outputs"][1] == {
        "name": "kept_positions_1",
        "shape": ["batch", 48],
        "dtype": "int64",
    }
    # The artifact still loads with its settings after the export rewrote config.json.
    assert sta_cli.load(artifact).sta.r1 == 4


def test_onnx_graph_contract(artifact):
    model = onnx.load(str(artifact / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    ops = {n.op_type for n in model.graph.node}
    assert "TopK" in ops and not ops & FORBIDDEN
    for n in model.graph.node:  # every TopK has a constant k (TensorRT needs an initializer)
        if n.op_type == "TopK":
            producer = [m for m in model.graph.node if n.input[1] in m.output]
            assert not producer or producer[0].op_type == "Constant"
    inp = model.graph.input[0]
    assert inp.name == "pixel_values"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 8, 64, 64]
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert outs == {
        "logits": ["batch", 7],
        "kept_positions_1": ["batch", 48],
        "kept_positions_2": ["batch", 40],
        "kept_positions_3": ["batch", 36],
    }
    # With the batch fixed, shape inference gives every tensor a numeric shape: no data-dependent sizes.
    del model.graph.value_info[:]
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes = [
        [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.value_info
    ]
    assert shapes and all(None not in s for s in shapes)
    assert {s[1] for s in shapes if len(s) == 3 and s[2] == 64} >= set(TOKENS)  # (batch, tokens, 64) activations


def test_onnx_metadata(artifact):
    meta = {p.key: p.value for p in onnx.load(str(artifact / "model.onnx"), load_external_data=False).metadata_props}
    assert json.loads(meta["labels"]) == [f"action_{i}" for i in range(7)]
    assert json.loads(meta["preprocessing"])["crop_size"] == 64
    sta = json.loads(meta["sta"])
    assert sta["r1"] == 4 and sta["first_group"] == "tome" and sta["scores_dtype"] == "float32"
    assert sta["tokens_per_stage"] == TOKENS
    assert json.loads(meta["io"])["inputs"][0]["name"] == "pixel_values"


def test_onnx_file_does_not_depend_on_the_install(artifact):
    """No exporter stack traces (they hold this machine's paths); the module name scopes stay."""
    graph = onnx.load(str(artifact / "model.onnx"), load_external_data=False).graph
    keys = {p.key for node in graph.node for p in node.metadata_props}
    assert "pkg.torch.onnx.name_scopes" in keys
    assert not keys & {"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node"}
    assert str(Path(sta_cli.__file__).parent).encode() not in (artifact / "model.onnx").read_bytes()


def test_gelu_runs_as_one_onnx_runtime_kernel(tmp_path, artifact):
    """The MLP's GELU is written in the order ONNX Runtime fuses (one Gelu/BiasGelu kernel, not five passes)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(artifact / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
    assert "Erf" not in ops and ops.count("Gelu") + ops.count("BiasGelu") == CFG.depth


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_translation_equals_torch(tmp_path, approximate):
    from sta_cli.formats.onnx import _gelu

    x = torch.randn(4, 50) * 3
    program = torch.onnx.export(
        torch.nn.GELU(approximate=approximate), (x,), dynamo=True, verbose=False,
        custom_translation_table={torch.ops.aten.gelu.default: _gelu},
    )  # fmt: skip
    program.save(str(tmp_path / "gelu.onnx"))
    session = ort.InferenceSession(str(tmp_path / "gelu.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, torch.nn.functional.gelu(x, approximate=approximate).numpy(), atol=1e-6, rtol=0)


@torch.no_grad()
def test_onnx_runtime_parity_dynamic_batch(artifact):
    """Independent of the exporter's own validation: ORT vs PyTorch on the clip and batches 1 and 2 (traced at 3)."""
    model = sta_cli.load(artifact)
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    torch.manual_seed(3)
    for x in (synthetic_clip(model.preprocessing), torch.randn(1, 3, 8, 64, 64), torch.randn(2, 3, 8, 64, 64)):
        logits, kept = model.forward_with_positions(x)
        out = session.run(None, {"pixel_values": x.numpy()})
        assert out[0].shape == (x.shape[0], 7)
        np.testing.assert_allclose(out[0], logits.numpy(), atol=1e-4, rtol=0)
        for o, k in zip(out[1:], kept):
            np.testing.assert_array_equal(o, k.numpy())
        assert (out[0].argmax(-1) == logits.argmax(-1).numpy()).all()


def test_validation_block_is_printed(workdir, artifact):
    """Human output: Optimum-style checks on stdout, where the files are."""
    r = run_cli("export", artifact.name, "-f", "torchscript", cwd=workdir)
    assert r.exit_code == 0, r.stderr
    assert "-[✓] kept positions identical (3 stages, 48/40/36 tokens)" in r.stdout
    assert "Validating on random batch of 2" in r.stdout and "-[✗]" not in r.stdout
    assert "model saved at: tiny-sta-r4/model.pt" in r.stdout


# --- TorchScript and torch.export: load without sta ----------------------------------------------

LOAD_WITHOUT_STA = r"""
import sys
sys.modules["sta_cli"] = None  # any import of sta_cli now fails
try:
    import sta_cli
    raise SystemExit("sta_cli importable")
except ImportError:
    pass
import json, torch
folder, data = sys.argv[1], torch.load(sys.argv[2])
ts = torch.jit.load(folder + "/model.pt")
extra = {"config.json": ""}
torch.jit.load(folder + "/model.pt", _extra_files=extra)
assert json.loads(extra["config.json"])["labels"][0] == "action_0"
pt2 = torch.export.load(folder + "/model.pt2").module()
for x, ref in data:
    for program in (ts, pt2):
        out = program(x)
        assert len(out) == 4 and torch.allclose(out[0], ref[0], atol=1e-5), (out[0], ref[0])
        assert all(torch.equal(o, r) for o, r in zip(out[1:], ref[1:]))
print("ok")
"""


@torch.no_grad()
def test_torchscript_and_pt2_run_without_sta(tmp_path, artifact):
    out = tmp_path / "ts"
    ts = export(artifact, "torchscript", out)
    pt2 = export(artifact, "pt2", out)  # a second format into the same export folder
    assert ts.validation.ok and pt2.validation.ok
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "model.pt", "model.pt2"]
    assert set(json.loads((out / "config.json").read_text())["exports"]) == {"torchscript", "pt2"}
    model = sta_cli.load(artifact)
    torch.manual_seed(5)
    data = []
    for b in (1, 3):
        x = torch.randn(b, 3, 8, 64, 64)
        logits, kept = model.forward_with_positions(x)
        data.append((x, [logits, *kept]))
    torch.save(data, tmp_path / "data.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_STA, str(out), str(tmp_path / "data.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# --- fp16, other STA options, ties ----------------------------------------------------------------


def test_fp16_onnx_loads_and_runs(tmp_path, artifact):
    report = export(artifact, "onnx", tmp_path / "fp16", fp16=True)
    assert report.dtype == "float16" and report.validation.atol == 5e-2
    assert report.reference.startswith("PyTorch float32")  # fp16 is judged against the fp32 model
    assert any("float32" in n for n in report.notes)  # says the STA scores stay float32
    if not torch.cuda.is_available():  # --device auto: the CPU on a machine without a GPU
        assert "CPUExecutionProvider" in report.runtime and report.reference.endswith("(cpu)")
    session = ort.InferenceSession(str(tmp_path / "fp16" / "model.onnx"), providers=["CPUExecutionProvider"])
    model = sta_cli.load(artifact)
    x = torch.randn(3, 3, 8, 64, 64)
    out = session.run(None, {"pixel_values": x.half().numpy()})
    assert out[0].dtype == np.float16 and out[0].shape == (3, 7)
    assert [o.shape for o in out[1:]] == [(3, 48), (3, 40), (3, 36)]
    with torch.no_grad():
        ref = model(x)
    assert np.abs(out[0].astype(np.float32) - ref.numpy()).max() < 0.05
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "fp16" / "model.onnx")).metadata_props}
    assert meta["sta"]["scores_dtype"] == "float32" and meta["io"]["inputs"][0]["dtype"] == "float16"


def test_model_spec_with_grid_first_group_exports_without_scatter(tmp_path, checkpoint):
    """--first-group grid goes through drop_last_order (formerly a scatter); fixed batch 2."""
    out = tmp_path / "grid"
    report = export(checkpoint, "onnx", out, r1=4, first_group="grid", seed=3, fixed_batch=2)
    assert report.validation.ok and report.sta["first_group"] == "grid"
    assert not set(report.graph.ops) & FORBIDDEN and report.graph.topk > 0
    assert not report.graph.not_static
    dims = [d.dim_value for d in onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 8, 64, 64]
    assert [c.case for c in report.validation.checks if c.case][-1] == "random batch of 2"


def test_ties_break_by_lower_index_in_torch_and_onnx(tmp_path):
    """Duplicated tokens give exactly tied scores: PyTorch and ONNX Runtime must keep the same ones."""
    from sta_cli.formats.onnx import _sort_stable

    tied = torch.tensor([[0.5, 0.2, 0.2, 0.9, 0.2, 0.5]])
    assert keep_lowest(tied, 4).tolist() == [[1, 2, 4, 0]]

    stage = Stage(block=0, groups=2, drop=3, backward=False, tokens_in=16)

    class Select(torch.nn.Module):
        def forward(self, x, metric):
            return stage_keep_indices(
                x, metric, torch.arange(16).expand(x.shape[0], 16), stage, STAConfig(r1=3), 0, (2, 4)
            )

    torch.manual_seed(0)
    base = torch.randn(2, 4, 8)
    x = base.repeat_interleave(4, 1)  # every token four times: ties everywhere
    metric = torch.randn(2, 4, 6).repeat_interleave(4, 1)
    path = tmp_path / "select.onnx"
    torch.onnx.export(
        Select().eval(),
        (x, metric),
        str(path),
        dynamo=True,
        opset_version=18,
        verbose=False,
        custom_translation_table={torch.ops.aten.sort.stable: _sort_stable},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), (x, metric))})
    np.testing.assert_array_equal(got, Select()(x, metric).numpy())


# --- bad input: one line, non-zero exit, nothing left behind -----------------------------------


def perturbed_torchscript(monkeypatch, logits_shift: float = 0.0, swap_kept: bool = False):
    """Make the exported program disagree with PyTorch the way a faulty runtime would."""
    from sta_cli.formats import torchscript as ts

    real = ts.load_torchscript

    def load(path, device="cpu"):
        program = real(path, device)

        def run(x):
            logits, *kept = program(x)
            if swap_kept:
                kept[1] = kept[1].flip(-1)
            return (logits + logits_shift, *kept)

        return run

    monkeypatch.setattr(ts, "load_torchscript", load)


def test_atol_miss_fails_and_writes_nothing(monkeypatch, workdir, artifact):
    perturbed_torchscript(monkeypatch, logits_shift=1e-3)
    before = listing(workdir)
    r = run_cli("export", artifact.name, "-f", "torchscript", "-o", "ts-out", cwd=workdir)
    assert r.exit_code == 3
    assert "-[✗] values not close (atol: 0.0001, max abs diff: 0.001)" in r.stdout
    assert "validation failed" in r.stderr and "--allow-mismatch" in r.stderr
    assert listing(workdir) == before  # no ts-out, no temporary folder
    # --allow-mismatch keeps it, says so, and records the difference.
    r = run_cli("export", artifact.name, "-f", "torchscript", "-o", "ts-out", "--allow-mismatch", "--json", cwd=workdir)
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["validation"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    assert sorted(p.name for p in (workdir / "ts-out").iterdir()) == ["config.json", "manifest.json", "model.pt"]
    entry = json.loads((workdir / "ts-out" / "config.json").read_text())["exports"]["torchscript"]
    assert entry["atol"] == 1e-4 and entry["mismatches_allowed"][0].startswith("values not close")
    r = run_cli("export", artifact.name, "-f", "torchscript", "-o", "ts-2", "--allow-mismatch", cwd=workdir)
    assert re.search(r"The export succeeded with \d mismatch\(es\) kept by --allow-mismatch, model saved", r.stdout)


def test_kept_token_mismatch_always_fails(monkeypatch, workdir, artifact):
    perturbed_torchscript(monkeypatch, swap_kept=True)
    before = listing(artifact)
    r = run_cli("export", "-f", "torchscript", "--allow-mismatch", "--force", "--json", cwd=workdir)
    assert r.exit_code == 3
    report = json.loads(r.stdout)
    assert not report["ok"] and "kept positions differ" in report["error"]
    assert listing(artifact) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["-f", "tflite"], "unknown format 'tflite'"),
        (["--opset", "16"], "--opset must be between 17"),
        (["--fixed-batch", "0"], "--fixed-batch must be at least 1"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--r1", "8"], "apply to --model"),
    ],
)
def test_bad_arguments(workdir, artifact, args, message):
    before = listing(workdir)
    r = run_cli("export", artifact.name, *args, cwd=workdir)
    assert_one_line_error(r, message)
    assert listing(workdir) == before


def test_incomplete_artifact(tmp_path, artifact):
    import shutil

    for missing in ("sta.json", "model.safetensors"):
        broken = tmp_path / f"no-{missing}"
        shutil.copytree(artifact, broken)
        (broken / missing).unlink()
        before = listing(broken)
        r = run_cli("export", broken, cwd=tmp_path)
        assert_one_line_error(r, "incomplete sta artifact", missing)
        assert listing(broken) == before


def test_unwritable_or_bad_out(tmp_path, artifact):
    (tmp_path / "a-file").write_text("x")
    r = run_cli("export", artifact, "-o", tmp_path / "a-file" / "sub", cwd=tmp_path)
    assert_one_line_error(r, "cannot write to")
    r = run_cli("export", artifact, "-o", tmp_path / "a-file", cwd=tmp_path)
    assert_one_line_error(r, "is not a folder")
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        r = run_cli("export", artifact, "-o", locked / "out", cwd=tmp_path)
        assert_one_line_error(r, "not writable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] + (["locked"] if os.geteuid() != 0 else [])


def test_model_spec_default_output_is_an_existing_artifact(workdir, checkpoint):
    before = listing(workdir)
    r = run_cli("export", "--model", checkpoint, "--r1", 4, cwd=workdir)
    assert_one_line_error(r, "tiny-sta-r4 is another sta artifact", "sta export tiny-sta-r4")
    assert listing(workdir) == before


def test_no_source_and_no_artifact(tmp_path):
    r = run_cli("export", "--format", "onnx", cwd=tmp_path)
    assert_one_line_error(r, "no SOURCE", "sta prune")
    assert list(tmp_path.iterdir()) == []


def test_unpruned_video_swin_exports_and_validates(tmp_path):
    """`sta export --model <swin> --r1 0`: Swin's token count shrinks by patch merging, yet an
    unpruned model has no kept_positions outputs, and the graph check must not expect any."""
    folder = write_swin(tmp_path / "tiny-swin", tiny_swin_config())
    r = run_cli("export", "--model", folder, "--r1", "0", "-o", tmp_path / "out", "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and [o["name"] for o in report["outputs"]] == ["logits"]
    assert "token counts static under ONNX shape inference (512 -> 128 -> 32 -> 8)" in report["validation_block"][3]
    assert all(c["ok"] for c in report["validation"]["checks"]) and report["validation"]["max_abs_diff"] < 1e-4
