"""`sta profile`: the report, the kept-token picture, the r1 sweep, ONNX Runtime, defaults, bad input.

Tiny random VideoMAE (conftest) on generated videos; one timed run per measurement (no timing
assertions: only that the numbers exist and are consistent).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_video import make_bad_inputs, write_video  # noqa: E402  (tests/ is on sys.path)
from typer.testing import CliRunner

import sta_cli
from sta_cli.cli import app
from sta_cli.errors import StaError
from sta_cli.flops import FLOPS_LABEL
from sta_cli.io.video import denormalise, load_clip
from sta_cli.models import registry
from sta_cli.pruning import STAConfig
from sta_cli.runtime import loading
from sta_cli.runtime.loading import paper_r1
from sta_cli.runtime.measure import scoring_timer
from sta_cli.runtime.predict import count_params
from sta_cli.tasks import profile as prof
from sta_cli.tasks import vis

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    # 40 frames of 80x64: the tiny model samples 8 frames at stride 4 (a 29-frame window).
    return write_video(tmp_path_factory.mktemp("clips") / "clip.mp4", "libx264", n=40, w=80, h=64)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, hub_folder) -> Path:
    out = tmp_path_factory.mktemp("art") / "tiny-sta-r4"
    sta_cli.prune(str(hub_folder), 4, out)
    return out


def test_report_side_by_side(hub_folder, clip_file):
    report = prof.profile(clip_file, str(hub_folder), runs=1, views="2x2")
    assert isinstance(report.agreement.top5_overlap, float) and report.pruned.torch.sta_scoring_ms > 0
    r = dataclasses.asdict(report)  # the --json view
    model = sta_cli.load(str(hub_folder))
    n_t, h, w = model.cfg.grid
    assert r["sta"]["r1"] == paper_r1(model) == round(64 * h * w / 196)
    assert any("64 of 196" in n for n in r["notes"])
    u, p = r["unpruned"], r["pruned"]
    # top-5: the unpruned column is the averaged softmax of the 4 views, recomputed here
    x = load_clip(clip_file, model.preprocessing, views=(2, 2))
    probs = model(x).softmax(-1).mean(0)
    assert [t["index"] for t in u["top5"]] == probs.topk(5).indices.tolist()
    assert np.allclose([t["prob"] for t in u["top5"]], probs.topk(5).values.tolist(), atol=1e-4)
    model.set_sta(STAConfig(r1=r["sta"]["r1"]))
    assert [t["index"] for t in p["top5"]] == model(x).softmax(-1).mean(0).topk(5).indices.tolist()
    assert u["params"] == p["params"] == count_params(model)
    assert p["gflops"] < u["gflops"] and r["gflops_convention"] == FLOPS_LABEL
    assert u["tokens_per_stage"] == [n_t * h * w] and p["tokens_per_stage"] == model.tokens_per_stage
    for side in (u, p):
        t = side["torch"]
        assert t["runs"] == 1 and t["latency_ms"] > 0
        assert t["throughput_clips_per_s"] == pytest.approx(1000 / t["latency_ms"], rel=1e-2)
    assert u["torch"]["sta_scoring_share"] == 0 and 0 < p["torch"]["sta_scoring_share"] < 1
    assert r["clip"]["views"] == "2x2" and len(r["clip"]["indices"]) == 2
    assert set(r["agreement"]) >= {"top1_agreement", "logit_cosine", "same_top1_after_averaging"}
    assert r["onnx"] is None and u["onnxruntime"] is None and r["warnings"] == []


def test_scoring_timer_times_every_stage_with_hooks_and_removes_them(hub_folder):
    model = sta_cli.load(str(hub_folder), r1=4)
    x = torch.randn(2, 3, 8, 64, 64)
    ref = model(x)
    with scoring_timer(model, x.device) as spent:
        out = model(x)
    assert torch.equal(out, ref)
    assert len(spent) == len(model.stages) and all(s > 0 for s in spent)  # one scoring call per STA stage
    assert not model.sta_scoring._forward_hooks and not model.sta_scoring._forward_pre_hooks


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_artifact_r1_and_onnx(artifact, clip_file, tmp_path):
    # An ONNX file of the unpruned model (the legacy exporter is quick on a plain ViT): it must be
    # recognised as the unpruned model and timed in that column.
    model = sta_cli.load(str(artifact), r1=0)
    onnx_file = tmp_path / "unpruned.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 8, 64, 64),),
        str(onnx_file),
        dynamo=False,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch"}},
    )
    r = dataclasses.asdict(prof.profile(clip_file, str(artifact), onnx=onnx_file, runs=1, batch=2))
    assert r["sta"]["r1"] == 4 and any("artifact's own setting" in n for n in r["notes"])
    assert r["onnx"]["matches"] == "unpruned" and r["onnx"]["max_abs_diff"]["unpruned"] < 1e-4
    assert r["onnx"]["max_abs_diff"]["pruned"] > 1e-4
    t = r["unpruned"]["onnxruntime"]
    assert t["batch"] == 2 and t["latency_ms"] > 0 and r["pruned"]["onnxruntime"] is None
    with pytest.raises(StaError, match="no such ONNX file"):
        prof.profile(clip_file, str(artifact), onnx=tmp_path / "missing.onnx", runs=1)


def test_kept_mask_maps_tokens_to_pixels():
    # grid 2 slices x 2 x 2, 4 frames of 4x4 pixels: token 0 = slice 0 top-left, 7 = slice 1 bottom-right
    m = vis.kept_mask(np.array([0, 7]), (2, 2, 2), 4, (4, 4))
    assert m.shape == (4, 4, 4)
    assert m[:2, :2, :2].all() and m[2:, 2:, 2:].all() and m.sum() == 2 * 4 + 2 * 4


def test_vis_whitens_dropped_tokens(hub_folder, clip_file, tmp_path):
    from PIL import Image

    model = sta_cli.load(str(hub_folder), r1=4)
    x = load_clip(clip_file, model.preprocessing)
    path = vis.draw_kept_tokens(model, x, model.preprocessing, tmp_path / "kept.png")
    _, kept = model.forward_with_positions(x)
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    frames = denormalise(x[0], model.preprocessing)
    T, H, W, _ = frames.shape
    cell, gap = 96, 2
    fw = fh = cell  # square 64 px frames scaled to 96 px
    label_w = img.shape[1] - T * (fw + gap)
    assert img.shape[0] == 4 * (fh + gap) + gap  # input row + one row per stage
    mask = vis.kept_mask(kept[2][0].numpy(), model.cfg.grid, T, (H, W))
    # stage-3 row: a dropped token is white, a kept one shows the frame
    f = 3
    ys, xs = np.nonzero(~mask[f])
    y0 = gap + 3 * (fh + gap) + int((ys[0] + 0.5) * fh / H)
    x0 = label_w + f * (fw + gap) + int((xs[0] + 0.5) * fw / W)
    assert (img[y0, x0] == 255).all()
    ys, xs = np.nonzero(mask[f])
    yk, xk = ys[len(ys) // 2], xs[len(xs) // 2]
    y1 = gap + 3 * (fh + gap) + int((yk + 0.5) * fh / H)
    x1 = label_w + f * (fw + gap) + int((xk + 0.5) * fw / W)
    assert np.abs(img[y1, x1] - frames[f, yk, xk]).max() <= 40  # nearest-neighbour upscale of the frame


def test_sweep_table_and_plot(hub_folder, clip_file, tmp_path):
    r = dataclasses.asdict(
        prof.profile(clip_file, str(hub_folder), r1=4, runs=1, sweep_r1="0,2,4", vis=tmp_path / "kept.png")
    )
    rows = r["sweep"]["rows"]
    assert [row["r1"] for row in rows] == [0, 2, 4]
    assert rows[0]["sta"]["top1_agreement"] == 1 and rows[0]["sta"]["logit_cosine"] == pytest.approx(1, abs=1e-5)
    assert rows[0]["random"]["logit_cosine"] == pytest.approx(1, abs=1e-5)
    assert rows[2]["gflops"] == r["pruned"]["gflops"] and rows[2]["tokens_per_stage"] == r["pruned"]["tokens_per_stage"]
    assert all(row["throughput"] > 0 and row["random"]["seeds"] == 3 for row in rows)
    # the random baseline really is another pruning: it changes the logits differently from STA
    assert rows[2]["random"]["logit_cosine"] != rows[2]["sta"]["logit_cosine"]
    png = Path(r["sweep"]["png"])
    assert png == tmp_path / "kept-sweep.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(r["vis"]).is_file() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "sweep,match", [("0,a", "comma-separated"), ("0,-4", "non-negative"), ("0,99", "r1 must be between")]
)
def test_bad_sweep_fails_before_work(hub_folder, clip_file, sweep, match):
    with pytest.raises(StaError, match=match):
        prof.profile(clip_file, str(hub_folder), r1=4, sweep_r1=sweep, runs=1)


def test_cli_json_is_one_object(hub_folder, clip_file, tmp_path):
    result = runner.invoke(
        app, ["profile", str(clip_file), "--model", str(hub_folder), "--r1", "2", "--runs", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["sta"]["r1"] == 2 and r["pruned"]["tokens_per_stage"][0] == 64


def test_cli_table_and_short_clip_warning(hub_folder, tmp_path):
    short = write_video(tmp_path / "short.webm", "libvpx-vp9", n=10, w=64, h=64)
    result = runner.invoke(app, ["profile", str(short), "--model", str(hub_folder), "--runs", "1"])
    assert result.exit_code == 0, result.output
    for text in (
        "unpruned",
        "pruned",
        "top-5",
        "GFLOPs (fvcore",
        "tokens per stage",
        "torch eager",
        "STA scoring share",
    ):
        assert text in result.stdout
    assert "warning:" in result.stderr and "padded by repeating" in result.stderr
    assert "r1=5 (the paper's 64 of 196 tokens per frame" in result.stderr


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "name", ["missing", "directory", "not_a_video", "audio_only", "zero_frames", "truncated_mp4", "corrupt_stream"]
)
def test_cli_bad_video_is_one_line(hub_folder, bad_inputs, name):
    path, phrase = bad_inputs[name]
    result = runner.invoke(app, ["profile", str(path), "--model", str(hub_folder), "--runs", "1"])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("sta: error: ") and phrase in lines[-1]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "args,phrase",
    [
        (["--views", "2by3"], "--views must look like TxS"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--r1", "99"], "r1 must be between"),
        (["--onnx", "nope.onnx"], "no such ONNX file"),
        (["--vis", "."], "is a folder"),
    ],
)
def test_cli_bad_options(hub_folder, clip_file, args, phrase):
    result = runner.invoke(app, ["profile", str(clip_file), "--model", str(hub_folder), "--runs", "1", *args])
    assert result.exit_code != 0 and phrase in result.stderr and "Traceback" not in result.stderr


def test_no_model_no_artifact_no_demo(tmp_path, clip_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "demo_model", lambda: None)
    result = runner.invoke(app, ["profile", str(clip_file)])
    assert result.exit_code != 0 and "no model given" in result.stderr


def test_demo_fallback_with_no_arguments(tmp_path, hub_folder, monkeypatch):
    """No model, no clip, no artifact here: the packaged demo alias and the clip next to its weights."""
    demo = tmp_path / "demo"
    demo.mkdir()
    for f in hub_folder.iterdir():
        (demo / f.name).write_bytes(f.read_bytes())
    write_video(demo / "sample.mp4", "libx264", n=32, w=64, h=64)
    monkeypatch.setitem(
        registry.ALIASES, "demo", registry.Alias("demo", str(demo), "videomae", "tiny", 5, "test", 4, packaged=True)
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["profile", "--runs", "1", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["model"]["spec"] == "demo" and Path(r["clip"]["path"]).name == "sample.mp4"
    assert "packaged demo model" in result.stderr and "sample clip" in result.stderr


def test_as_typed_next_to_a_pruned_artifact(tmp_path, hub_folder, clip_file):
    """`sta profile clip.mp4` in a folder where `sta prune` left an artifact, through the console script."""
    sta_cli.prune(str(hub_folder), 4, tmp_path / "tiny-sta-r4")
    (tmp_path / "clip.mp4").write_bytes(clip_file.read_bytes())
    sta = Path(sys.executable).parent / "sta"
    cmd = [str(sta)] if sta.exists() else [sys.executable, "-m", "sta_cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*cmd, "profile", "clip.mp4", "--runs", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "using the artifact in ./tiny-sta-r4" in done.stderr and "r1=4: the artifact's own setting" in done.stderr
    assert "tiny-sta-r4 on clip.mp4" in done.stdout and "64 -> 48 -> 40 -> 36" in done.stdout


def test_the_unpruned_export_is_kept_beside_the_artifact_and_reused(tmp_path):
    from conftest import run_cli

    assert run_cli("prune", "--model", "demo", "-o", "art", cwd=tmp_path).exit_code == 0
    assert run_cli("export", "art", "-f", "onnx", cwd=tmp_path).exit_code == 0
    first = run_cli("profile", "--model", "art", "--runs", 1, "--json", cwd=tmp_path)
    assert first.exit_code == 0, first.stderr
    kept = sorted(p.name for p in (tmp_path / "art").glob("unpruned-*.onnx"))
    assert len(kept) == 1 and "kept the unpruned export" in first.stderr
    second = run_cli("profile", "--model", "art", "--runs", 1, "--json", cwd=tmp_path)
    assert second.exit_code == 0, second.stderr
    assert "reusing the unpruned export" in second.stderr
    assert json.loads(second.stdout)["unpruned"]["onnxruntime"]["export_reused"] is True
    import sta_cli

    sta_cli.load(tmp_path / "art")  # the manifest records the new file: the artifact still verifies
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert kept[0] in manifest["files"]


def test_a_fixed_batch_graph_is_compared_at_its_batch(tmp_path):
    """A graph exported with --fixed-batch 2 is timed at batch 2: so is the unpruned one beside it (it
    was timed at batch 1 next to it)."""
    from conftest import run_cli

    from sta_cli.tasks.profile import profile

    assert run_cli("prune", "--model", "demo", "-o", "art", cwd=tmp_path).exit_code == 0
    assert run_cli("export", "art", "-f", "onnx", "--fixed-batch", 2, cwd=tmp_path).exit_code == 0
    report = profile(model=tmp_path / "art", runs=1)
    assert report.onnx.matches == "pruned" and report.onnx.timing.batch == 2
    assert report.unpruned.onnxruntime.batch == 2


def test_a_profile_that_loses_the_race_to_cache_the_unpruned_export_reuses_it(tmp_path, monkeypatch):
    """Two profiles of one artifact at once: the one whose export finds the other's published reuses
    it (it said "did not export ... pass --force", an option profile does not have)."""
    from conftest import run_cli

    from sta_cli.errors import StaError
    from sta_cli.tasks import profile_onnx
    from sta_cli.tasks.profile import profile

    assert run_cli("prune", "--model", "demo", "-o", "art", cwd=tmp_path).exit_code == 0
    assert run_cli("export", "art", "-f", "onnx", cwd=tmp_path).exit_code == 0
    publish = profile_onnx._export_unpruned

    def lose_the_race(model, opset, cached):
        publish(model, opset, cached)  # the other profile publishes first
        raise StaError(f"{cached.parent} already holds {cached.name} (pass --force to replace it)")

    monkeypatch.setattr(profile_onnx, "_export_unpruned", lose_the_race)
    report = profile(model=tmp_path / "art", runs=1)
    assert report.unpruned.onnxruntime is not None and report.unpruned.onnxruntime.export_reused
