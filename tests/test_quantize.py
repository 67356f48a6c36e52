"""`sta export --quantize int8`: model.int8.onnx (linear layers int8, STA scores float32), validated
against the float32 PyTorch model on the packaged demo; `sta profile` times it."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from conftest import run_cli  # noqa: E402

from sta_cli.formats import quantize as q  # noqa: E402


@pytest.fixture(scope="module")
def demo_int8(tmp_path_factory) -> tuple[Path, dict]:
    """`sta prune --model demo` then `sta export --quantize int8` (64 held-out clips to stay fast)."""
    cwd = tmp_path_factory.mktemp("int8")
    r = run_cli("prune", "--model", "demo", "-o", "demo-sta", cwd=cwd)
    assert r.exit_code == 0, r.stderr
    r = run_cli("export", "demo-sta", "--quantize", "int8", "--accuracy-clips", 64, "--json", cwd=cwd)
    assert r.exit_code == 0, r.stderr
    return cwd / "demo-sta", json.loads(r.stdout)


def test_quantised_demo_graph_validates(demo_int8):
    folder, report = demo_int8
    assert report["ok"] and (folder / "model.int8.onnx").is_file() and (folder / "model.onnx").is_file()
    int8 = report["int8"]
    checks = int8["validation"]["checks"]
    assert [c["message"] for c in checks if not c["ok"] and c["kind"] != "warning"] == []
    assert int8["quantization"]["quantized"] == int8["quantization"]["linear_layers"] - 1  # all but the head (Gemm)
    assert int8["logit_cosine"] >= q.MIN_COSINE
    acc = int8["accuracy"]
    assert acc["clips"] == 64 and acc["drop"] <= q.DEFAULT_MAX_ACCURACY_DROP
    assert acc["drop"] == pytest.approx(acc["float32_unpruned"] - acc["int8_sta"], abs=0.02)
    messages = [c["message"] for c in checks]
    assert any(
        m.startswith("kept positions ") and "; kept-set overlap with float32 PyTorch: stage 1:" in m for m in messages
    )
    assert any(m.startswith("top-1 identical to float32 PyTorch") for m in messages)
    assert any(m.startswith("held-out top-1 on 64 demo clips: int8 + STA") for m in messages)
    config = json.loads((folder / "config.json").read_text())
    assert (
        config["exports"]["onnx_int8"]["file"] == "model.int8.onnx"
        and config["exports"]["onnx"]["file"] == "model.onnx"
    )


def test_scores_stay_float32(demo_int8):
    """Only MatMuls with a stored weight became integer ops; every activation x activation product
    (attention and STA's similarity / transition matrices) is still a float MatMul feeding TopK."""
    folder, report = demo_int8
    float_graph = onnx.load(str(folder / "model.onnx"))
    int8_graph = onnx.load(str(folder / "model.int8.onnx"))
    linear, activation = q.linear_nodes(float_graph)
    constants = q._constants(int8_graph.graph)
    integer = [n for n in int8_graph.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert integer and all(n.input[1] in constants for n in integer)
    left = [n for n in int8_graph.graph.node if n.op_type == "MatMul" and n.input[1] not in constants]
    assert len(left) == activation == report["int8"]["quantization"]["float_matmuls"] > 0
    assert sum(1 for n in int8_graph.graph.node if n.op_type == "TopK") == sum(
        1 for n in float_graph.graph.node if n.op_type == "TopK"
    )
    assert os.path.getsize(folder / "model.int8.onnx") < 0.6 * os.path.getsize(folder / "model.onnx")


def test_profile_times_the_int8_graph(demo_int8):
    from sta_cli.tasks.profile import profile

    folder, _ = demo_int8
    report = profile(model=folder, runs=2)
    assert report.onnx_int8.file.endswith("model.int8.onnx")
    assert report.pruned.onnxruntime_int8.latency_ms > 0
    assert report.onnx_int8.logit_cosine_vs_pruned >= q.MIN_COSINE


def test_accuracy_drop_past_the_threshold_fails_and_writes_nothing(tmp_path, monkeypatch):
    real = q.heldout_accuracy

    def worse(run, model, clips, batch):
        measured = real(run, model, clips, batch)
        return dataclasses.replace(measured, int8_sta=measured.float32_unpruned - 3.0, drop=3.0)

    monkeypatch.setattr(q, "heldout_accuracy", worse)
    export_int8 = ["export", "--model", "demo", "--r1", 21, "-o", "out", "--quantize", "int8", "--accuracy-clips", 16]
    r = run_cli(*export_int8, "--max-accuracy-drop", 2.5, cwd=tmp_path)
    assert r.exit_code == 3 and "Traceback" not in r.stderr
    assert (
        "sta: error: model.int8.onnx: validation failed on held-out clips: held-out top-1 on 16 demo clips" in r.stderr
    )
    assert "drop +3.00 points, at most 2.5" in r.stdout and "nothing was written" in r.stderr
    assert not (tmp_path / "out").exists()
    r = run_cli(*export_int8, "--max-accuracy-drop", 3, "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["int8"]["accuracy"]["drop"] == 3.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quantize", "int4"], "unknown --quantize 'int4' (choose int8)"),
        (["--quantize", "int8", "-f", "torchscript"], "--quantize int8 applies to --format onnx"),
        (["--quantize", "int8", "--fp16"], "drop --fp16"),
        (["--max-accuracy-drop", "1"], "apply to --quantize int8"),
        (["--quantize", "int8", "--max-accuracy-drop", "-1"], "--max-accuracy-drop must be 0 or more"),
    ],
)
def test_bad_quantize_arguments(tmp_path, args, message):
    r = run_cli("export", "--model", "demo", "-o", "out", *args, cwd=tmp_path)
    assert r.exit_code != 0 and "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("·")]
    assert lines == [lines[0]] and lines[0].startswith("sta: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_sessions_do_not_spin(demo_int8):
    from sta_cli.runtime.ort import session as ort_session
    from sta_cli.tasks.profile_onnx import onnx_session

    folder, _ = demo_int8
    for session in (ort_session(folder / "model.int8.onnx", "cpu")[0], onnx_session(folder / "model.onnx")):
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_external_weights_quantise_without_leftovers(tmp_path):
    """A graph whose weights live in an external data file (as the exporter writes them above 2 GB)
    quantises beside itself (int8 weights external too), runs, and leaves no temporary file."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(w, "w")],
        value_info=[helper.make_tensor_value_info("unused", TensorProto.FLOAT, [8])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)  # older runtimes read 9
    src = tmp_path / "model.onnx"
    onnx.save(proto, str(src), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    report = q.quantize_int8(src, tmp_path / q.INT8_FILE)
    assert report.linear_layers == 1 and report.quantized == 1
    x = rng.standard_normal((3, 64)).astype(np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / q.INT8_FILE)).run(None, {"x": x})
    assert np.corrcoef(y.ravel(), (x @ w).ravel())[0, 1] > 0.99
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["model.int8.onnx", "model.int8.onnx.data", "model.onnx", "model.onnx.data"]


def test_profile_times_only_the_int8_graph_sta_recorded_for_this_model(demo_int8, tmp_path):
    """Beside a float graph of other settings the int8 graph is not timed (it was, under the pruned
    column of another r1); a swapped int8 file is a checksum error, and an unrecorded file where
    the unpruned export would be cached is not timed as the unpruned model."""
    import shutil

    from sta_cli.errors import StaError
    from sta_cli.tasks.profile import profile
    from sta_cli.tasks.profile_onnx import unpruned_cache_path

    folder, _ = demo_int8
    report = profile(model=folder, r1=4, runs=1)
    assert report.onnx.matches is None and report.onnx_int8 is None and report.pruned.onnxruntime_int8 is None
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped)
    shutil.copy(swapped / "model.onnx", swapped / "model.int8.onnx")
    with pytest.raises(StaError, match="model.int8.onnx does not match the checksum"):
        profile(model=swapped, runs=1)
    planted = tmp_path / "planted"
    shutil.copytree(folder, planted, ignore=shutil.ignore_patterns("unpruned-*"))
    manifest = json.loads((planted / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("unpruned-")}
    (planted / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(planted / "model.onnx", unpruned_cache_path(planted / "model.onnx", 18))  # the pruned graph
    report = profile(model=planted, runs=1)
    assert report.onnx.matches == "pruned" and report.unpruned.onnxruntime is None


def test_a_demo_artifact_validates_on_the_demo_sample_clip(demo_int8):
    """An artifact pruned from the demo is named after its folder; it is still the demo's model and
    validates on the demo's sample clip (it took the synthetic one, which int8 may misread)."""
    import torch

    import sta_cli
    from sta_cli.tasks.export import validation_cases

    folder, _ = demo_int8
    first = validation_cases(sta_cli.load(folder), None, torch.float32, None)[0]
    assert first.label.startswith("clip ") and first.label.split(" (")[0].endswith("sample.mp4")
