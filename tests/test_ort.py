"""ONNX Runtime sessions (runtime.ort): what export validation's low-memory session changes, and what it does not."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sta_cli.runtime.ort import session  # noqa: E402


def bias_graph(path):
    """y = x + table[index]: the shape of Video Swin's relative-position bias, whose gather of a
    constant table by a constant index ONNX Runtime's constant folding would store as a new weight."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((15, 3)).astype(np.float32), "table")
    index = numpy_helper.from_array(rng.integers(0, 15, (4, 4)).astype(np.int64), "index")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "index"], ["bias"], name="bias_gather"),
            helper.make_node("Add", ["x", "bias"], ["y"], name="add"),
        ],
        "bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4, 3])],
        initializer=[table, index],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # readable by every onnxruntime the package allows
    onnx.save(model, path)
    return path


def nodes_run(sess) -> set[str]:
    """Names of the graph nodes the session ran (from its profile)."""
    events = json.loads(open(sess.end_profiling()).read())
    return {e["name"].removesuffix("_kernel_time") for e in events if e.get("cat") == "Node"}


def test_low_memory_session_does_not_fold_constants_and_gives_the_same_values(tmp_path):
    path = bias_graph(tmp_path / "bias.onnx")
    x = np.random.default_rng(1).standard_normal((4, 4, 3)).astype(np.float32)
    runs = {}
    for low_memory in (False, True):
        sess, _, _ = session(path, "cpu", profile_prefix=str(tmp_path / f"p{low_memory}"), low_memory=low_memory)
        runs[low_memory] = (sess.run(None, {"x": x})[0], nodes_run(sess))
    (folded, ran_folded), (unfolded, ran_unfolded) = runs[False], runs[True]
    assert "bias_gather" not in ran_folded  # computed once at load, kept as a weight
    assert "bias_gather" in ran_unfolded  # computed in every run instead
    np.testing.assert_array_equal(folded, unfolded)


# What ONNX Runtime 1.20.1 says when it loads a `sta export --opset 23` graph (its first line).
OPSET_TOO_NEW = (
    "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/"
    "model_load_utils.h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain(...) ONNX Runtime only "
    "*guarantees* support for models stamped with official released onnx opset versions. Opset 23 is under "
    "development and support for this is limited. Current official support for domain ai.onnx is till opset 21."
)


def test_a_graph_newer_than_onnx_runtime_says_which_opset_to_export(tmp_path, monkeypatch):
    import onnxruntime

    from sta_cli.errors import StaError

    bias_graph(tmp_path / "m.onnx")

    def too_old(*args, **kwargs):
        raise RuntimeError(OPSET_TOO_NEW)

    monkeypatch.setattr(onnxruntime, "InferenceSession", too_old)
    with pytest.raises(StaError) as e:
        session(tmp_path / "m.onnx")
    message = str(e.value)
    assert "--opset 21 or lower" in message and "upgrade onnxruntime" in message, message
    assert "\n" not in message and "onnxruntime_src" not in message, message
