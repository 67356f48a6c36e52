"""The three commands from Python, as a deployment script runs them: `import sta_cli` only."""

from __future__ import annotations

import dataclasses
import json

import pytest

import sta_cli

pytest.importorskip("onnxruntime")


def test_prune_export_profile_from_python(tmp_path):
    art = tmp_path / "demo-art"
    pruned = sta_cli.prune("demo", r1=10, out=art)
    assert pruned.output == str(art) and (art / "model.safetensors").is_file()
    exported = sta_cli.export(art, "onnx")
    assert exported.ok and exported.validation.ok and (art / "model.onnx").is_file()
    assert exported.graph.topk > 0 and exported.graph.not_static == []
    # The export report is dataclasses all the way down: --json is their asdict.
    as_json = json.loads(json.dumps(dataclasses.asdict(exported), allow_nan=False))
    assert list(as_json["validation"]) == ["atol", "tie_tol", "max_abs_diff", "cases", "checks", "ok"]
    profiled = sta_cli.profile(None, art, runs=2, threads=1)
    assert profiled.sta["r1"] == 10 and profiled.pruned.gflops < profiled.unpruned.gflops
    assert profiled.onnx is not None and profiled.onnx.matches == "pruned"
    json.dumps(dataclasses.asdict(profiled), allow_nan=False)  # what --json prints


def test_command_names_are_the_functions_and_the_writers_stay_importable():
    from sta_cli.formats import onnx as onnx_writer

    assert callable(sta_cli.export) and callable(sta_cli.profile) and callable(sta_cli.evaluate)
    assert sta_cli.export.__module__ == "sta_cli.tasks.export" and hasattr(onnx_writer, "export_onnx")


def test_bad_input_raises_the_one_line_error(tmp_path):
    with pytest.raises(sta_cli.StaError, match="unknown model"):
        sta_cli.export(tmp_path / "nothing-here", "onnx")


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(bogus=1), "unknown STA option 'bogus'"),
        (dict(first_group="random", seed="x"), "seed must be an integer, got 'x'"),
    ],
)
def test_bad_sta_options_raise_the_one_line_error(tmp_path, options, message):
    """Library callers pass STA options as keywords: a typo or a wrong type is an StaError, nothing written."""
    with pytest.raises(sta_cli.StaError, match=message):
        sta_cli.prune("demo", r1=5, out=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_the_library_runs_without_a_model_as_the_cli_does(tmp_path, monkeypatch):
    """export and profile with no model use the artifact `prune` left in the current folder, from
    Python too (profile ran the plain demo at r1 = 21 instead, and export required a source)."""
    monkeypatch.chdir(tmp_path)
    sta_cli.prune("demo", r1=10)
    report = sta_cli.profile(runs=1)
    assert report.model.artifact and report.model.spec == "demo-sta-r10"
    assert "using the artifact in ./demo-sta-r10" in report.notes
    exported = sta_cli.export(format="torchscript")
    assert exported.ok and exported.output == "demo-sta-r10"


def test_the_library_checks_what_the_cli_checks(tmp_path):
    """A seed without a random choice, STA options of an eval that asks for r1 = 0 only, and a device
    that is not there: the CLI's lines, not silence or torch's own exceptions."""
    from sta_cli.demo import sample_path

    with pytest.raises(sta_cli.StaError, match="--seed has no effect here"):
        sta_cli.load("demo", seed=3)
    assert sta_cli.load("demo", r1=4, first_group="random", seed=3).sta.seed == 3
    (tmp_path / "videos.txt").write_text(f"{sample_path()} 0\n")
    with pytest.raises(sta_cli.StaError, match="unknown STA option 'ordr'"):
        sta_cli.evaluate(tmp_path / "videos.txt", "demo", "0", out=tmp_path / "ev", ordr="bfb", workers=0)
    assert not (tmp_path / "ev").exists()
    with pytest.raises(sta_cli.StaError, match="--device cuda: no CUDA device is available"):
        sta_cli.load("demo", device="cuda")
    # the architecture keywords of load and prune, on every command (export said "unknown STA option")
    with pytest.raises(sta_cli.StaError, match="num-heads must be a positive integer, got 0"):
        sta_cli.profile(model="demo", num_heads=0)
    report = sta_cli.export("demo", "torchscript", tmp_path / "ts", r1=4, mean="0.4,0.4,0.4")
    assert json.loads((tmp_path / "ts" / "config.json").read_text())["preprocessing"]["mean"] == [0.4] * 3
    assert report.ok
