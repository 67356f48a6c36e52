"""`sta prune` end to end on a tiny model, and every kind of bad input it must refuse cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, read_json, run_cli, to_original_layout

import sta_cli


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_prune_end_to_end(tmp_path, hub_folder):
    r = run_cli("prune", "--model", hub_folder, "--r1", 4, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)  # stdout is exactly one JSON object
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's private 0700
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["config.json", "manifest.json", "model.safetensors", "report.json", "sta.json"]
    assert read_json(tmp_path / "out" / "report.json")["gflops"] == report["gflops"]
    assert report["tokens"]["pruned"] == [64, 48, 40, 36]
    assert report["gflops"]["pruned"] < report["gflops"]["unpruned"]
    assert "fvcore" in report["gflops"]["convention"]
    v = report["validation"]
    assert v["reproduces_source"]["ok"] and v["reproduces_source"]["max_abs_diff"] == 0
    assert v["clip"] == "synthetic"
    # The agreement figures are those of the written artifact, pruned vs unpruned, on the same clip.
    from sta_cli.io.video import synthetic_clip

    pruned_model, unpruned_model = sta_cli.load(tmp_path / "out"), sta_cli.load(tmp_path / "out", r1=0)
    x = synthetic_clip(pruned_model.preprocessing)
    with torch.no_grad():
        a, b = unpruned_model(x), pruned_model(x)
    assert v["top1_agreement"] == float(a.argmax() == b.argmax())
    assert v["logit_cosine"] == pytest.approx(torch.cosine_similarity(a, b).item(), abs=1e-6)
    config = read_json(tmp_path / "out" / "config.json")
    assert config["labels"][0] == "action_0" and config["preprocessing"]["num_frames"] == 8
    assert read_json(tmp_path / "out" / "sta.json")["r1"] == 4
    # The artifact is a model spec: it loads with its settings.
    model = sta_cli.load(tmp_path / "out")
    assert model.sta.r1 == 4
    # Human output: a summary and where the artifact is.
    r = run_cli("prune", "--model", hub_folder, "--r1", 4, "-o", tmp_path / "out", "--force", "--first-group", "grid")
    assert r.exit_code == 0 and "artifact written to" in r.stdout and "GFLOPs" in r.stdout
    assert read_json(tmp_path / "out" / "sta.json")["first_group"] == "grid"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_prune_default_output_folder(tmp_path, hub_folder):
    r = run_cli("prune", "--model", hub_folder, "--r1", 2, cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "tiny-videomae-sta-r2" / "sta.json").is_file()
    assert "tiny-videomae-sta-r2" in r.stdout


def test_prune_with_a_video_clip(tmp_path, hub_folder):
    import av
    import numpy as np

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "yuv420p"
        for t in range(40):
            img = np.full((80, 96, 3), 40, np.uint8)
            img[20:40, 2 * t : 2 * t + 20] = (250, 30, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    r = run_cli("prune", "--model", hub_folder, "--r1", 4, "-o", tmp_path / "out", "--clip", path, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["validation"]["clip"] == str(path)


@pytest.fixture
def bad_inputs(tmp_path, hf_model, hub_folder):
    sd = to_original_layout(hf_model.state_dict())
    truncated = tmp_path / "truncated.safetensors"
    data = (hub_folder / "model.safetensors").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, foreign)
    wrong_depth = tmp_path / "wrong"
    wrong_depth.mkdir()
    torch.save(sd, wrong_depth / "checkpoint.pth")
    (wrong_depth / "config.json").write_text(json.dumps({**hf_model.config.to_dict(), "num_hidden_layers": 4}))
    return {"truncated": truncated, "foreign": foreign, "wrong_depth": wrong_depth}


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {EVIL_MARK}",))


EVIL_MARK = Path("/tmp/sta-test-pickle-ran-code")


def test_pickle_holding_code_is_refused_and_not_run(tmp_path):
    EVIL_MARK.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil()}, path)
    r = run_cli("prune", "--model", path, "--r1", 4, "-o", tmp_path / "out")
    assert_one_line_error(r, "not plain weights")
    assert not EVIL_MARK.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "case,args,fragments",
    [
        ("unknown alias", ["--model", "videomae-gigantic"], ["unknown model", "videomae-gigantic"]),
        ("misspelt alias", ["--model", "videomae-larg"], ["unknown model", "did you mean 'videomae-large'?"]),
        ("missing file", ["--model", "{tmp}/nope.safetensors"], ["unknown model"]),
        ("truncated", ["--model", "{truncated}"], ["truncated.safetensors", "corrupt or truncated"]),
        ("foreign weights", ["--model", "{foreign}"], ["not a VideoMAE classifier"]),
        ("wrong architecture", ["--model", "{wrong_depth}"], ["config says num_hidden_layers 4", "weights have 6"]),
        ("r1 too large", ["--model", "{hub}", "--r1", "9"], ["r1 must be between 0 and 8"]),
        ("r1 negative", ["--model", "{hub}", "--r1", "-3"], ["r1"]),
        ("bad option", ["--model", "{hub}", "--order", "sideways"], ["order must be one of"]),
    ],
)
def test_bad_input_one_line_nothing_written(tmp_path, hub_folder, bad_inputs, case, args, fragments):
    subs = {"tmp": tmp_path, "hub": hub_folder, **bad_inputs}
    args = [a.format(**subs) for a in args]
    if "--r1" not in args:
        args += ["--r1", "4"]
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_cli("prune", *args, "-o", tmp_path / "out")
    assert_one_line_error(r, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_existing_and_unwritable_output(tmp_path, hub_folder):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    r = run_cli("prune", "--model", hub_folder, "--r1", 4, "-o", tmp_path / "out")
    assert_one_line_error(r, "already exists", "--force")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = run_cli("prune", "--model", hub_folder, "--r1", 4, "-o", blocker / "out")
    assert_one_line_error(r, "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "out"]


def test_failure_midway_leaves_nothing(tmp_path, hub_folder, monkeypatch):
    from sta_cli.io import artifact

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifact, "save_file", broken)
    with pytest.raises(sta_cli.StaError, match="No space left"):
        sta_cli.prune(hub_folder, 4, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_models_lists_aliases():
    r = run_cli("models", "--json")
    rows = {row["alias"]: row for row in json.loads(r.stdout)}
    assert rows["videomae-large"]["source"] == "MCG-NJU/videomae-large-finetuned-kinetics"
    assert rows["videomae-base-ssv2"]["classes"] == 174


def test_console_script_and_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sta_cli", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("sta ")
