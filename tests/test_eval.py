"""`sta eval`: metrics against a direct per-video computation, torchrun sharding, resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sta_cli
from sta_cli.cli import app
from sta_cli.errors import StaError
from sta_cli.io.video import load_clip
from sta_cli.tasks.evaluate import run as evaluate_run
from sta_cli.tasks.evaluate.run import Progress


def evaluate(*args, **kwargs) -> dict:
    """sta_cli.tasks.evaluate.run.evaluate, its EvalSummary as the dict summary.json holds."""
    summary = evaluate_run.evaluate(*args, **kwargs)
    assert isinstance(summary.settings[0].counts.videos, int)  # fixed fields, filled in
    return dataclasses.asdict(summary)


runner = CliRunner()
LABELS = ["moving right", "moving left", "moving down", "moving up", "spare_4", "spare_5", "spare_6", "spare_7"]
DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1)]  # the first four classes
R1S = [2, 4]  # tokens per frame: 16 (32 px crops, patch 8), so r1 <= 8


def write_video(path: Path, cls: int, seed: int, frames: int = 20, h: int = 40, w: int = 56) -> None:
    """A coloured square moving in the class's direction over a noisy grey background (h264 mp4)."""
    import av

    rng = np.random.default_rng(seed)
    colour = rng.integers(120, 256, 3)
    bg = (110 + 20 * rng.standard_normal((h, w, 3))).clip(0, 255)
    dx, dy = DIRECTIONS[cls]
    x0, y0 = rng.integers(14, w - 26), rng.integers(10, h - 22)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            img = bg.copy()
            x, y = int(x0 + dx * t * 0.6), int(y0 + dy * t * 0.5)
            img[y : y + 10, x : x + 10] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test machine's cores are shared: one intra-op thread is several times faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """10 labelled videos under data/videos, and val.txt naming them (label names and indices mixed)."""
    data = tmp_path_factory.mktemp("data")
    (data / "videos").mkdir()
    lines = []
    for i in range(10):
        cls = i % 4
        write_video(data / "videos" / f"v{i:02d}.mp4", cls, seed=i)
        lines.append(f"videos/v{i:02d}.mp4 {cls if i % 2 else LABELS[cls].replace(' ', '_')}")
    (data / "val.txt").write_text("\n".join(lines) + "\n")
    return data


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, videos) -> Path:
    """A tiny VideoMAE as a plain sta-spelling model folder (config.json with labels + safetensors).

    Random blocks; the head is fitted (ridge regression on the pooled features of the test videos'
    centre clips) so that predictions vary and pruning changes some of them, as on real data.
    """
    from safetensors.torch import save_file

    from sta_cli.io.artifact import model_config, write_json
    from sta_cli.io.video import load_clip
    from sta_cli.models.base import ModelCard
    from sta_cli.models.videomae import VideoMAE, VideoMAEConfig

    torch.manual_seed(0)
    cfg = VideoMAEConfig(
        embed_dim=64,
        depth=6,
        num_heads=4,
        mlp_dim=128,
        num_classes=len(LABELS),
        image_size=32,
        patch_size=8,
        num_frames=8,
    )
    model = VideoMAE(cfg).eval()
    preprocessing = {
        "num_frames": 8,
        "frame_stride": 2,
        "short_side": 32,
        "crop_size": 32,
        "mean": [0.45, 0.45, 0.45],
        "std": [0.225, 0.225, 0.225],
        "value_range": 1.0,
    }
    model.card = ModelCard("videomae", "tiny", LABELS, preprocessing)
    with torch.no_grad():
        x = torch.cat([load_clip(videos / "videos" / f"v{i:02d}.mp4", model.preprocessing) for i in range(10)])
        f = model.forward_tokens(x)[0]
        f = torch.cat([f, torch.ones(len(f), 1)], 1)
        y = torch.nn.functional.one_hot(torch.arange(10) % 4, len(LABELS)).float() * 4
        w = torch.linalg.solve(f.T @ f + 1e-3 * torch.eye(f.shape[1]), f.T @ y)
        model.head.weight.copy_(w[:-1].T)
        model.head.bias.copy_(w[-1])
    folder = tmp_path_factory.mktemp("model") / "tiny"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    write_json(folder / "config.json", model_config(model))
    return folder


def dataset_with(folder: Path, src: Path, extra: list[str]) -> Path:
    """A copy of src's list with extra lines, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    lst = folder / "list.txt"
    base = [f"{src / ln.split()[0]} {ln.split()[1]}" for ln in (src / "val.txt").read_text().splitlines()]
    lst.write_text("\n".join(base + extra) + "\n")
    return lst


def comparable(summary: dict) -> dict:
    """A summary without what depends on timing or on where it was written."""
    s = json.loads(json.dumps(summary))
    for k in ("this_run", "output"):
        s.pop(k)
    for row in s["settings"]:
        row.pop("clips_per_s"), row.pop("timed_clips")
    return s


@torch.no_grad()
def direct(tiny_model: Path, data: Path, views: tuple[int, int]) -> dict:
    """Per video and r1, one forward of that video's views alone: mean softmax, top-5."""
    lines = (data / "val.txt").read_text().splitlines()
    result = {}
    for r1 in [0, *R1S]:
        model = sta_cli.load(tiny_model, r1=r1)
        for i, line in enumerate(lines):
            x = load_clip(data / line.split()[0], model.preprocessing, views=views, show_progress=False)
            assert x.shape == (views[0] * views[1], 3, 8, 32, 32)
            p = model(x).softmax(-1).mean(0)
            result[(i, r1)] = p
    return result


def test_metrics_match_direct_per_video_computation(tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    s = evaluate(videos / "val.txt", tiny_model, R1S, views="2x2", batch=6, workers=1, out=out)
    ref = direct(tiny_model, videos, (2, 2))
    labels = [i % 4 for i in range(10)]
    records = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(10)) and [r["label"] for r in records] == labels
    for r in records:
        assert r["views"] == 4
        for r1 in [0, *R1S]:
            pred, p = r["predictions"][str(r1)], ref[(r["index"], r1)].numpy()
            # Batched vs alone differ by float noise only; compare values, so ties cannot flip the test.
            assert np.allclose(p[pred["top5"]], pred["prob"], atol=1e-5)
            assert np.allclose(pred["prob"], np.sort(p)[::-1][:5], atol=1e-5)
    assert s == json.loads((out / "summary.json").read_text())
    assert s["videos"] == {"total": 10, "evaluated": 10, "failed": 0} and s["views"] == "2x2"
    assert [row["r1"] for row in s["settings"]] == [0, *R1S]
    for row in s["settings"]:
        top1 = np.mean([int(ref[(i, row["r1"])].argmax()) == labels[i] for i in range(10)])
        top5 = np.mean([labels[i] in ref[(i, row["r1"])].topk(5).indices.tolist() for i in range(10)])
        agree = np.mean([int(ref[(i, row["r1"])].argmax()) == int(ref[(i, 0)].argmax()) for i in range(10)])
        assert (row["top1"], row["top5"], row["agreement_with_unpruned"]) == pytest.approx((top1, top5, agree))
        model = sta_cli.load(tiny_model, r1=row["r1"])
        assert row["gflops_per_clip"] == pytest.approx(sta_cli.flops.gflops(model), abs=1e-4)
        assert row["gflops_per_video"] == pytest.approx(4 * row["gflops_per_clip"], abs=1e-3)
        assert row["tokens"] == model.tokens_per_stage and row["clips_per_s"] > 0 and row["timed_clips"] == 40
    assert s["settings"][0]["agreement_with_unpruned"] == 1.0
    flops = [row["gflops_per_clip"] for row in s["settings"]]
    assert flops[0] > flops[1] > flops[2]
    # The same numbers from a class-per-folder dataset.
    tree = tmp_path / "tree"
    for i in range(10):
        (tree / LABELS[i % 4]).mkdir(parents=True, exist_ok=True)
        shutil.copy(videos / "videos" / f"v{i:02d}.mp4", tree / LABELS[i % 4] / f"v{i:02d}.mp4")
    s2 = evaluate(tree, tiny_model, R1S, views="2x2", batch=4, workers=0, out=tmp_path / "out2")
    assert [r["top1"] for r in s2["settings"]] == [r["top1"] for r in s["settings"]]
    assert [r["top5"] for r in s2["settings"]] == [r["top5"] for r in s["settings"]]


def test_csv_dataset_and_label_mapping(tmp_path, tiny_model, videos):
    csv = tmp_path / "val.csv"
    rows = [f"{videos / 'videos' / f'v{i:02d}.mp4'},{LABELS[i % 4].upper() if i % 3 else i % 4},x" for i in range(4)]
    csv.write_text("video_path,label,comment\n" + "\n".join(rows) + "\n")
    s = evaluate(csv, tiny_model, "2", workers=0, out=tmp_path / "o")
    records = [json.loads(ln) for ln in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == [0, 1, 2, 3]
    assert s["videos"]["evaluated"] == 4 and [r["r1"] for r in s["settings"]] == [0, 2]
    # fp16 autocast: same pipeline, unpruned probabilities within half-precision rounding of fp32
    # (pruned ones may keep other tokens when two scores are within rounding).
    evaluate(csv, tiny_model, "2", workers=0, out=tmp_path / "fp16", precision="fp16")
    half = [json.loads(ln) for ln in (tmp_path / "fp16" / "predictions.jsonl").read_text().splitlines()]
    for a, b in zip(records, half):
        for key in ("0",):
            pa = dict(zip(a["predictions"][key]["top5"], a["predictions"][key]["prob"]))
            pb = dict(zip(b["predictions"][key]["top5"], b["predictions"][key]["prob"]))
            assert max(abs(pa[k] - pb.get(k, 0.0)) for k in pa) < 0.05


TORCHRUN_TIMEOUT = 120


def test_torchrun_two_processes_match_one(tmp_path, tiny_model, videos):
    args = [
        str(videos / "val.txt"),
        "--model",
        str(tiny_model),
        "--r1",
        "2,4",
        "--views",
        "2x1",
        "--batch",
        "4",
        "--workers",
        "1",
        "--json",
    ]
    one = runner.invoke(app, ["eval", *args, "-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "sta_cli",
        "eval",
        *args,
        "-o",
        str(tmp_path / "two"),
    ]
    two = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TORCHRUN_TIMEOUT, cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    s1, s2 = json.loads(one.stdout), json.loads(two.stdout)  # only rank 0 prints: one JSON object
    assert s2["this_run"]["world_size"] == 2 and s1["this_run"]["world_size"] == 1
    assert comparable(s1) == comparable(s2)
    assert (tmp_path / "one" / "predictions.jsonl").read_bytes() == (
        tmp_path / "two" / "predictions.jsonl"
    ).read_bytes()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    # Resuming a 2-process run in one process finds nothing left to do and reports the same.
    again = runner.invoke(app, ["eval", *args, "-o", str(tmp_path / "two")])
    assert again.exit_code == 0 and comparable(json.loads(again.stdout)) == comparable(s1)


class StopAfter(Progress):
    """Interrupts the run (as Ctrl-C would) once `n` videos are done."""

    def __init__(self, n):
        self.n, self.done = n, 0

    def advance(self, n):
        self.done += n
        if self.done >= self.n:
            raise KeyboardInterrupt


def test_resume_after_interruption(tmp_path, tiny_model, videos):
    kw = dict(views="1x2", batch=2, workers=0)
    full = evaluate(videos / "val.txt", tiny_model, R1S, out=tmp_path / "full", **kw)
    expected = (tmp_path / "full" / "predictions.jsonl").read_bytes()

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        evaluate(videos / "val.txt", tiny_model, R1S, out=out, progress=StopAfter(3), **kw)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3 and not (out / "summary.json").exists()
    # Also lose a line and leave a half-written one, as a kill during a write would.
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text(lines[0] + "\n" + lines[2] + "\n" + lines[1][: len(lines[1]) // 2])

    class Count(Progress):
        def start(self, total, done):
            self.total, self.already = total, done

    seen = Count()
    resumed = evaluate(videos / "val.txt", tiny_model, R1S, out=out, progress=seen, **kw)
    assert (seen.total, seen.already) == (10, 2)
    assert comparable(resumed) | {"output": 0} == comparable(full) | {"output": 0}
    assert (out / "predictions.jsonl").read_bytes() == expected

    # A different evaluation in the same folder is refused before any work, and nothing changes.
    for change in (dict(r1=[4]), dict(views="2x2"), dict(score="temporal"), dict(precision="bf16")):
        args = {"r1": R1S, **kw, **change}
        with pytest.raises(StaError, match="different evaluation"):
            evaluate(videos / "val.txt", tiny_model, out=out, **args)
    # Other weights of the same size in the same folder (a fine-tuned copy) are another model too.
    from safetensors.torch import load_file, save_file

    mine = tmp_path / "mine"
    shutil.copytree(tiny_model, mine)
    evaluate(videos / "val.txt", mine, R1S, out=tmp_path / "mine-eval", **kw)
    weights = next(mine.glob("*.safetensors"))
    sd = load_file(weights)
    name = next(k for k, v in sd.items() if v.dim() == 2)
    sd[name] = sd[name] * 1.5
    save_file(sd, str(weights))
    with pytest.raises(StaError, match=r"different evaluation \(differs in: model\)"):
        evaluate(videos / "val.txt", mine, R1S, out=tmp_path / "mine-eval", **kw)
    # --force starts over.
    again = evaluate(videos / "val.txt", tiny_model, [4], out=out, force=True, **kw)
    assert [r["r1"] for r in again["settings"]] == [0, 4]


def test_corrupt_videos_are_counted_and_reported(tmp_path, tiny_model, videos):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.mp4").write_bytes(os.urandom(3000))
    (bad / "empty.mp4").write_bytes(b"")
    good = (videos / "videos" / "v00.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(good[: len(good) // 8])
    write_video(bad / "short.mp4", 2, seed=99, frames=6)  # fewer frames than a clip spans: padded, with a warning
    names = ("garbage.mp4", "empty.mp4", "truncated.mp4", "short.mp4")
    lst = dataset_with(tmp_path / "d", videos, [f"{bad / n} 0" for n in names])
    r = runner.invoke(
        app, ["eval", str(lst), "-m", str(tiny_model), "--r1", "2", "-o", str(tmp_path / "o"), "--workers", "1"]
    )
    assert r.exit_code == 0, r.stderr
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["videos"]["total"] == 14 and s["videos"]["evaluated"] + s["videos"]["failed"] == 14
    failed = {Path(f["path"]).name for f in s["failed"]}
    assert {"garbage.mp4", "empty.mp4"} <= failed and failed <= {"garbage.mp4", "empty.mp4", "truncated.mp4"}
    assert all(row["counts"]["videos"] == s["videos"]["evaluated"] for row in s["settings"])
    assert f"{s['videos']['failed']} of 14 videos could not be read" in r.stdout and "garbage.mp4" in r.stdout
    assert "garbage.mp4" in r.stderr and "Traceback" not in r.stderr  # logged while running
    records = [json.loads(ln) for ln in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert sum("error" in rec for rec in records) == s["videos"]["failed"]
    short = next(rec for rec in records if rec["path"].endswith("short.mp4"))
    assert "error" not in short and "padded" in short["warnings"][0] and "padded" in r.stderr


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sta: error: "), result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_dataset_is_refused_before_any_work(tmp_path, tiny_model, videos):
    out = tmp_path / "o"
    missing = dataset_with(tmp_path / "m", videos, ["nowhere/a.mp4 1", "nowhere/b.mp4 2"])
    r = runner.invoke(app, ["eval", str(missing), "-m", str(tiny_model), "-o", str(out), "--r1", "2"])
    assert_one_line_error(r, "2 of 12 videos", "do not exist", "nowhere/a.mp4 (list.txt line 11)")
    spare = tmp_path / "u"  # other files: a list naming a video twice is refused for that
    spare.mkdir()
    for name in ("c0.mp4", "c1.mp4"):
        shutil.copy(videos / "videos" / "v00.mp4", spare / name)
    unknown = dataset_with(spare, videos, [f"{spare / 'c0.mp4'} jumping", f"{spare / 'c1.mp4'} 8"])
    r = runner.invoke(app, ["eval", str(unknown), "-m", str(tiny_model), "-o", str(out), "--r1", "2"])
    assert_one_line_error(r, "2 videos", "labels the model does not know", "'8'", "'jumping'", "list.txt line 11")
    r = runner.invoke(app, ["eval", str(videos / "val.txt"), "-m", str(tiny_model), "-o", str(out), "--r1", "9"])
    assert_one_line_error(r, "r1 must be between 0 and 8")
    r = runner.invoke(app, ["eval", str(videos / "val.txt"), "-m", str(tiny_model), "-o", str(out), "--views", "5by3"])
    assert_one_line_error(r, "--views")
    r = runner.invoke(app, ["eval", str(tmp_path / "none.txt"), "-m", str(tiny_model), "-o", str(out)])
    assert_one_line_error(r, "no such dataset")
    assert not out.exists()  # nothing was written


def small_list(folder: Path, videos: Path, labels: list[str]) -> Path:
    """A list of copies of the first len(labels) test videos (copies: tests may change them), labelled `labels`."""
    (folder / "videos").mkdir(parents=True)
    for i in range(len(labels)):
        shutil.copy(videos / "videos" / f"v{i:02d}.mp4", folder / "videos" / f"v{i:02d}.mp4")
    lst = folder / "val.txt"
    lst.write_text("".join(f"videos/v{i:02d}.mp4 {label}\n" for i, label in enumerate(labels)))
    return lst


def test_resume_refuses_another_architecture_with_the_same_weights(tmp_path, tiny_model, videos):
    lst = small_list(tmp_path / "d", videos, ["0", "1"])
    mine = tmp_path / "mine"
    shutil.copytree(tiny_model, mine)
    evaluate(lst, mine, [2], workers=0, out=tmp_path / "o")
    # Other heads, same weights: a config.json edit, or --num-heads (ArchOverrides) over the same folder.
    from sta_cli.models.overrides import ArchOverrides

    with pytest.raises(StaError, match=r"different evaluation \(differs in: model\)"):
        evaluate(lst, mine, [2], workers=0, out=tmp_path / "o", arch=ArchOverrides(num_heads=2))
    config = json.loads((mine / "config.json").read_text())
    assert config["model"]["num_heads"] == 4
    config["model"]["num_heads"] = 2
    (mine / "config.json").write_text(json.dumps(config))
    with pytest.raises(StaError, match=r"different evaluation \(differs in: model\)"):
        evaluate(lst, mine, [2], workers=0, out=tmp_path / "o")


def test_resume_redoes_replaced_and_failed_videos(tmp_path, tiny_model, videos):
    kw = dict(r1=[2], batch=2, workers=0)
    lst = small_list(tmp_path / "d", videos, ["0", "1", "2", "3"])
    files = tmp_path / "d" / "videos"
    whole = (files / "v02.mp4").read_bytes()
    (files / "v02.mp4").write_bytes(whole[:3000])  # still being copied
    out = tmp_path / "o"
    first = evaluate(lst, tiny_model, out=out, **kw)
    assert first["videos"]["failed"] == 1
    (files / "v02.mp4").write_bytes(whole)  # the copy finished
    shutil.copy(videos / "videos" / "v05.mp4", files / "v00.mp4")  # other footage under the same name
    st = (files / "v03.mp4").stat()
    os.utime(files / "v03.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten, same size

    class Count(Progress):
        def start(self, total, done):
            self.already = done

    # Interrupted once the new v00 is written: predictions.jsonl then holds two lines for video 0.
    with pytest.raises(KeyboardInterrupt):
        evaluate(lst, tiny_model, out=out, progress=StopAfter(1), **kw)
    assert [json.loads(ln)["index"] for ln in (out / "predictions.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 0]
    seen = Count()
    resumed = evaluate(lst, tiny_model, out=out, progress=seen, **kw)
    assert seen.already == 2  # v01 and the new v00; the repaired v02 and the touched v03 are redone
    fresh = evaluate(lst, tiny_model, out=tmp_path / "fresh", **kw)
    assert resumed["videos"] == {"total": 4, "evaluated": 4, "failed": 0}
    assert comparable(resumed) | {"output": 0} == comparable(fresh) | {"output": 0}
    assert (out / "predictions.jsonl").read_bytes() == (tmp_path / "fresh" / "predictions.jsonl").read_bytes()


def test_resume_retries_a_video_that_failed_for_a_passing_reason(tmp_path, tiny_model, videos, monkeypatch):
    from sta_cli.tasks.evaluate import dataset

    lst = small_list(tmp_path / "d", videos, ["0", "1"])
    decode = dataset.decode_views

    def flaky(path, *args, **kwargs):  # a network file system's hiccup, say: the file itself is fine
        if path.name == "v01.mp4":
            raise OSError("Input/output error")
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(dataset, "decode_views", flaky)
    assert evaluate(lst, tiny_model, [2], workers=0, out=tmp_path / "o")["videos"]["failed"] == 1
    monkeypatch.setattr(dataset, "decode_views", decode)
    again = evaluate(lst, tiny_model, [2], workers=0, out=tmp_path / "o")
    assert again["videos"] == {"total": 2, "evaluated": 2, "failed": 0} and again["failed"] == []


def test_labels_are_read_one_way_per_dataset(tmp_path, tiny_model, videos):
    from sta_cli.tasks.evaluate.dataset import map_labels, read_entries

    digits = [str(i + 1) for i in range(len(LABELS))]  # class names that are numbers (UCF101's classInd)

    def classes(labels: list[str], names: list[str]) -> list[int]:
        lst = tmp_path / "l.txt"
        lst.write_text("".join(f"{videos / 'videos' / f'v{i:02d}.mp4'} {y}\n" for i, y in enumerate(labels)))
        return [e.label for e in map_labels(read_entries(lst), names, lst)]

    assert classes(["0", "1", "2", "3"], digits) == [0, 1, 2, 3]  # "0" is no name: indices throughout
    assert classes(["1", "2", "8"], digits) == [0, 1, 7]  # 8 is no index: names throughout
    assert classes(["moving_right", "1", "Moving-Down"], LABELS) == [0, 1, 2]  # a mix, each read one way only
    numbered = tmp_path / "numbered"
    shutil.copytree(tiny_model, numbered)
    config = json.loads((numbered / "config.json").read_text())
    (numbered / "config.json").write_text(json.dumps({**config, "labels": digits}))
    lst = tmp_path / "amb.txt"
    lst.write_text("".join(f"{videos / 'videos' / f'v{i:02d}.mp4'} {i + 1}\n" for i in range(3)))
    r = runner.invoke(app, ["eval", str(lst), "-m", str(numbered), "-o", str(tmp_path / "o"), "--r1", "2"])
    assert_one_line_error(r, "ambiguous", "'1' (first at amb.txt line 1)", "class 0", "class 1")
    assert not (tmp_path / "o").exists()


def test_a_label_that_is_a_digit_but_no_number_is_unknown(tmp_path, tiny_model, videos):
    # "²" is a digit to str.isdigit() but no number to int(): an unknown label like any other.
    lst = tmp_path / "sup.txt"
    lst.write_text(f"{videos / 'videos' / 'v00.mp4'} \u00b2\n")
    r = runner.invoke(app, ["eval", str(lst), "-m", str(tiny_model), "-o", str(tmp_path / "o"), "--r1", "2"])
    assert_one_line_error(r, "1 videos", "labels the model does not know", "'\u00b2'")
    assert not (tmp_path / "o").exists()


def test_csv_with_two_label_columns_must_agree(tmp_path, tiny_model, videos):
    from sta_cli.tasks.evaluate.dataset import map_labels, read_entries

    path = [videos / "videos" / f"v{i:02d}.mp4" for i in range(4)]
    agree = tmp_path / "agree.csv"
    agree.write_text("video,label,class_name\n" + "".join(f"{path[i]},{i},{LABELS[i]}\n" for i in range(4)))
    assert [e.label for e in map_labels(read_entries(agree), LABELS, agree)] == [0, 1, 2, 3]
    alphabetical = sorted(LABELS)  # the dataset's own class ids, not the model's
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "video,label,class_name\n"
        + "".join(f"{path[i]},{alphabetical.index(LABELS[i])},{LABELS[i]}\n" for i in range(4))
    )
    r = runner.invoke(app, ["eval", str(bad), "-m", str(tiny_model), "-o", str(tmp_path / "o"), "--r1", "2"])
    assert_one_line_error(r, "two label columns, 'label' and 'class_name'", "bad.csv line 2", "drop one")
    assert not (tmp_path / "o").exists()


def test_a_video_listed_twice_is_refused(tmp_path, tiny_model, videos):
    again = f"{videos}/videos/../videos/v00.mp4 0"  # another spelling of the first video
    lst = dataset_with(tmp_path / "d", videos, [again])
    r = runner.invoke(app, ["eval", str(lst), "-m", str(tiny_model), "-o", str(tmp_path / "o"), "--r1", "2"])
    assert_one_line_error(r, "lists the same video 2 times", "v00.mp4 at list.txt line 1, list.txt line 11")
    assert not (tmp_path / "o").exists()


def assert_refused_with_and_without_force(lst: Path, model: Path, out: Path, *words: str) -> None:
    before = sorted(p.name for p in out.iterdir())
    for force in ([], ["--force"]):
        r = runner.invoke(app, ["eval", str(lst), "-m", str(model), "-o", str(out), "--r1", "2", *force])
        assert_one_line_error(r, *words)
        assert "--force to" not in r.stderr  # the advice is what works
        assert sorted(p.name for p in out.iterdir()) == before


def test_eval_never_writes_into_an_sta_artifact(tmp_path, tiny_model, videos):
    pruned = tmp_path / "pruned"
    r = runner.invoke(app, ["prune", "-m", str(tiny_model), "--r1", "2", "-o", str(pruned)])
    assert r.exit_code == 0, r.stderr
    lst = dataset_with(tmp_path / "d", videos, [])
    assert_refused_with_and_without_force(lst, tiny_model, pruned, "not an sta eval output", "choose another -o")


def test_a_broken_run_json_gets_advice_that_works(tmp_path, tiny_model, videos):
    broken = tmp_path / "broken"  # an eval output whose run.json a hand edit broke
    broken.mkdir()
    (broken / "run.json").write_text('{"format": "sta-ev')
    (broken / "predictions.jsonl").write_text("")
    lst = dataset_with(tmp_path / "d", videos, [])
    assert_refused_with_and_without_force(lst, tiny_model, broken, "run.json is unreadable", "remove the folder")
