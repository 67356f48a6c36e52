"""Every bad input and fault listed in docs/reliability.md, run as written there.

Each table row with a command runs in a folder laid out as the document describes; it must exit
with the listed code, print one `sta: error:` line holding the listed words, print no traceback,
and leave the folder exactly as it was. Rows whose outcome needs a real fault (kill -9, two
processes at once, a full disk) name the test below that reproduces it.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, check_error_text, run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
ROW = re.compile(
    r"^\|\s*(?P<n>\d+)\s*\|[^|]*\|\s*`(?P<command>(?:[A-Z_]+=\S+ )*sta [^`]*)`\s*\|\s*(?P<code>\d+)\s*\|"
    r"\s*`(?P<message>[^`]*)`\s*\|"
)
BY_TEST = re.compile(r"^\|\s*(?P<n>\d+)\s*\|[^|]*\|\s*test `(?P<test>test_\w+)`")


def doc_rows() -> list[dict]:
    return [m.groupdict() for line in DOC.read_text().splitlines() if (m := ROW.match(line))]


class _RunsCode:
    """Unpickling this runs a shell command: the pickle a checkpoint must never be."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


class _Optimizer:
    """An object that is not weights, as training scripts pickle them."""


def _build_place(root: Path) -> None:
    """The folder the document's examples run in (see its "Where the examples run")."""
    demo = Path(__import__("sta_cli").__file__).parent / "assets" / "demo"
    r = run_cli("prune", "--model", "demo", "--r1", 8, "-o", "art", cwd=root)
    assert r.exit_code == 0, r.stderr
    r = run_cli("export", "art", "--format", "onnx", cwd=root)
    assert r.exit_code == 0, r.stderr
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("my notes\n")
    (root / "empty").mkdir()
    (root / "file.txt").write_text("a file\n")
    rng = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).numpy().tobytes()
    (root / "random.pth").write_bytes(noise)
    (root / "random.safetensors").write_bytes(noise)
    (root / "empty.pth").write_bytes(b"")
    weights = (root / "art" / "model.safetensors").read_bytes()
    (root / "trunc.safetensors").write_bytes(weights[: len(weights) // 2])
    (root / "code.pth").write_bytes(pickle.dumps({"model": _RunsCode()}))
    from safetensors.torch import load_file, save_file

    sd = load_file(demo / "model.safetensors")
    torch.save({"model": sd, "optimizer": _Optimizer()}, root / "optim.pth")
    for name, config in (("listconfig", "[]"), ("abcconfig", '{"model_type": "videomae", "hidden_size": "abc"}')):
        (root / name).mkdir()
        (root / name / "config.json").write_text(config)
        shutil.copy(demo / "model.safetensors", root / name)
    hf = {
        "model_type": "videomae",
        "hidden_size": 64,
        "num_hidden_layers": 6,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "image_size": 64,
        "patch_size": 8,
        "num_frames": 16,
        "tubelet_size": 2,
        "num_labels": 8,
    }
    for name, change in (("hugeconfig", {"hidden_size": 2**26}), ("bigimage", {"image_size": 2**20})):
        (root / name).mkdir()
        (root / name / "config.json").write_text(__import__("json").dumps({**hf, **change}))
        shutil.copy(demo / "model.safetensors", root / name)
    (root / "weightsonly").mkdir()
    shutil.copy(demo / "model.safetensors", root / "weightsonly")
    (root / "noweights").mkdir()
    shutil.copy(demo / "config.json", root / "noweights")
    (root / "twoweights").mkdir()
    torch.save(sd, root / "twoweights" / "a.pth")
    torch.save(sd, root / "twoweights" / "b.pth")
    (root / "nanmodel").mkdir()
    shutil.copy(demo / "config.json", root / "nanmodel")
    sd_nan = dict(sd)
    first = next(k for k in sd_nan if k.endswith("weight") and sd_nan[k].dim() == 2)
    sd_nan[first] = sd_nan[first].clone()
    sd_nan[first][0, 0] = float("nan")
    save_file(sd_nan, str(root / "nanmodel" / "model.safetensors"))
    for name in ("tampered", "tampered-onnx", "badmanifest", "incomplete"):
        shutil.copytree(root / "art", root / name)
    shutil.copytree(root / "art", root / "artnotes")
    shutil.copytree(root / "art", root / "nomanifest")
    (root / "nomanifest" / "manifest.json").unlink()
    shutil.copytree(root / "art", root / "usermodel")
    (root / "usermodel" / "model.pt").write_text("my own model\n")
    (root / "artnotes" / "NOTES.txt").write_text("mine\n")
    (root / "deploy").mkdir()  # a user's app with a copy of an export's config.json (sta 0.1 had no manifest)
    config = __import__("json").loads((root / "art" / "config.json").read_text())
    (root / "deploy" / "config.json").write_text(__import__("json").dumps({**config, "format": "sta-export"}))
    (root / "deploy" / "manifest.json").write_text('{"name": "my-web-app"}\n')
    (root / "deploy" / "app.py").write_text("print('serving')\n")
    _flip_bytes(root / "tampered" / "model.safetensors")
    _flip_bytes(root / "tampered-onnx" / "model.onnx")
    (root / "badmanifest" / "manifest.json").write_text("{")
    (root / "incomplete" / "model.safetensors").unlink()
    (root / "badclip.mp4").write_bytes(noise)
    (root / "empty.mp4").write_bytes(b"")
    (root / "clip.txt").write_text("not a video\n")
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "picture.png")
    (root / "videos.txt").write_text(f"{demo / 'sample.mp4'} 0\n")


def _flip_bytes(path: Path) -> None:
    """Same size, other contents: what a bad copy or a hostile edit leaves."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("place")
    _build_place(root)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root (hidden ones too) with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_the_document_lists_at_least_sixty_cases():
    rows = doc_rows()
    by_test = [m["test"] for line in DOC.read_text().splitlines() if (m := BY_TEST.match(line))]
    numbers = [int(r["n"]) for r in rows]
    assert len(rows) + len(by_test) >= 60
    assert len(set(numbers)) == len(numbers)
    missing = [t for t in by_test if t not in globals()]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


@pytest.mark.parametrize("row", doc_rows(), ids=lambda r: f"{r['n']}: {r['command']}")
def test_bad_input_gives_one_line_and_leaves_nothing(place, row):
    words = row["command"].split()
    env = dict(w.split("=", 1) for w in words if "=" in w and w.split("=", 1)[0].isupper())
    args = [w for w in words if w not in {f"{k}={v}" for k, v in env.items()}][1:]
    before = snapshot(place)
    if env:  # environment variables are read at import time by some libraries: a fresh process
        r = subprocess.run(
            [sys.executable, "-m", "sta_cli", *args],
            cwd=place,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == int(row["code"]), r.stderr
        check_error_text(r.stderr, row["message"])
    else:
        result = run_cli(*args, cwd=place)
        assert result.exit_code == int(row["code"]), result.stderr
        assert_one_line_error(result, row["message"])
    assert snapshot(place) == before
    assert not (place / "pwned").exists()


# --- faults: real processes, real kills ------------------------------------------------------------

WRITER = """
import os, signal, sys, time
from pathlib import Path
from sta_cli.io import outputs
out, mode = Path(sys.argv[1]), sys.argv[2]
with outputs.new_folder(out) as tmp:
    (tmp / "model.safetensors").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()  # the test lets this writer publish when it chooses
print("published", flush=True)
"""


def _writer(out: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_leaves_no_result_and_the_next_run_cleans_up(tmp_path):
    p = _writer(tmp_path / "out", "kill")
    p.communicate(timeout=120)
    assert p.returncode == -9
    left = [q.name for q in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.") and left[0].endswith(".sta-tmp")  # hidden, marked
    assert not (tmp_path / "out").exists()
    from sta_cli.io.artifact import find_artifacts

    (tmp_path / left[0] / "sta.json").write_text("{}")  # even if it looked complete
    (tmp_path / left[0] / "config.json").write_text('{"format": "sta-artifact"}')
    assert find_artifacts(tmp_path) == []
    from sta_cli.io import outputs

    with outputs.new_folder(tmp_path / "other") as tmp:
        (tmp / "a").write_text("a")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["other"]  # the dead writer's folder is gone


# `sta prune` of the demo, paused for good once its weights are in the temporary folder: the kill
# then always lands mid-write, however fast the machine.
PAUSED_PRUNE = """
import time
import sta_cli.io.artifact as artifact
save = artifact.save_file
artifact.save_file = lambda *args, **kwargs: (save(*args, **kwargs), time.sleep(600))
from sta_cli.cli import app
app(["prune", "--model", "demo", "-o", "out"])
"""


def test_kill_9_during_sta_prune_is_not_taken_for_an_artifact(tmp_path):
    p = subprocess.Popen(
        [sys.executable, "-c", PAUSED_PRUNE], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        for _ in range(2400):  # until the temporary folder holds the weights
            tmps = [q for q in tmp_path.iterdir() if q.name.endswith(".sta-tmp")]
            if tmps and (tmps[0] / "model.safetensors").exists():
                break
            if p.poll() is not None:
                pytest.fail(f"sta prune ended before it could be killed: {p.stderr.read()!r}")
            __import__("time").sleep(0.05)
    finally:
        p.kill()
        p.wait()
    assert not (tmp_path / "out").exists()
    r = run_cli("export", "--format", "torchscript", cwd=tmp_path)
    assert_one_line_error(r, "no SOURCE: pass an artifact folder or --model")


def test_two_writers_one_wins_the_other_fails_cleanly(tmp_path):
    first, second = _writer(tmp_path / "out", "wait"), _writer(tmp_path / "out", "wait")
    assert first.stdout.readline() == "writing\n" and second.stdout.readline() == "writing\n"
    out1, err1 = first.communicate("go\n", timeout=120)
    out2, err2 = second.communicate("go\n", timeout=120)
    assert first.returncode == 0 and "published" in out1
    assert second.returncode != 0 and "appeared while sta was writing" in err2
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out"]  # the loser's temporary folder is gone


def test_two_sta_prune_at_once_never_both_succeed(tmp_path):
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "sta_cli", "prune", "--model", "demo", "--r1", str(r1), "-o", "out"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r1 in (8, 16)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code)
    assert loser.strip().splitlines()[-1].startswith("sta: error: ") and "Traceback" not in loser
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out"]
    winner_r1 = 8 if results[0][0] == 0 else 16
    assert __import__("json").loads((tmp_path / "out" / "sta.json").read_text())["r1"] == winner_r1


def test_a_second_eval_into_the_same_folder_is_refused(place, tmp_path):
    from sta_cli.io import outputs

    with outputs.exclusive(tmp_path / "ev"):
        r = run_cli("eval", place / "videos.txt", "--model", "demo", "-o", tmp_path / "ev", "--workers", 0)
    assert_one_line_error(r, "being written by another sta process")


def test_disk_full_while_writing_weights(monkeypatch, tmp_path):
    import errno

    import sta_cli.io.artifact as artifact

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifact, "save_file", full)
    r = run_cli("prune", "--model", "demo", "-o", "out", cwd=tmp_path)
    assert_one_line_error(r, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# --- what --force may replace ------------------------------------------------------------------------


def test_force_replaces_an_artifact_and_nothing_else(place, tmp_path):
    shutil.copytree(place / "art", tmp_path / "old")
    r = run_cli("prune", "--model", "demo", "--r1", 16, "-o", "old", "--force", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert __import__("json").loads((tmp_path / "old" / "sta.json").read_text())["r1"] == 16
    (tmp_path / "empty").mkdir()
    assert run_cli("prune", "--model", "demo", "-o", "empty", "--force", cwd=tmp_path).exit_code == 0
    (tmp_path / "sub").mkdir()
    assert_one_line_error(
        run_cli("prune", "--model", "demo", "-o", "..", "--force", cwd=tmp_path / "sub"), "current folder"
    )


def test_export_replaces_its_model_file_only_with_force(place, tmp_path, monkeypatch):
    shutil.copytree(place / "art", tmp_path / "art")
    (tmp_path / "art" / "my-notes.txt").write_text("mine")
    import sta_cli.tasks.export as export_task

    with monkeypatch.context() as m:  # refused before the model is built
        m.setattr(export_task, "build_from_source", lambda *a, **k: pytest.fail("built the model"))
        for args in (["art"], ["art", "-o", "art"], []):  # the artifact named, named twice, found in the folder
            refused = run_cli("export", *args, "-f", "onnx", cwd=tmp_path if args else tmp_path / "art")
            assert_one_line_error(refused, "already holds model.onnx", "--force")
    r = run_cli("export", "art", "-f", "onnx", "--fp16", "--force", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert "replacing" in r.stderr and "model.onnx (float32" in r.stderr
    assert (tmp_path / "art" / "my-notes.txt").read_text() == "mine"
    import sta_cli

    sta_cli.load(tmp_path / "art")  # the manifest describes the new file: the artifact still verifies


def test_pictures_replace_only_what_sta_drew(tmp_path):
    r = run_cli("profile", "--model", "demo", "--vis", "kept.png", "--runs", 1, cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    r = run_cli("profile", "--model", "demo", "--vis", "kept.png", "--runs", 1, cwd=tmp_path)
    assert r.exit_code == 0, r.stderr  # sta's own picture: replaced


def test_force_replaces_an_artifact_holding_a_picture_sta_drew(place, tmp_path):
    shutil.copytree(place / "art", tmp_path / "art")
    r = run_cli("profile", "--model", "art", "--vis", "art/kept.png", "--runs", 1, cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    r = run_cli("prune", "--model", "demo", "--r1", 16, "-o", "art", "--force", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr  # sta's own picture goes with sta's folder
    assert not (tmp_path / "art" / "kept.png").exists()
    shutil.copy(place / "picture.png", tmp_path / "art" / "kept.png")  # the user's picture stays
    r = run_cli("prune", "--model", "demo", "-o", "art", "--force", cwd=tmp_path)
    assert_one_line_error(r, "files sta did not write (kept.png)")
    assert (tmp_path / "art" / "kept.png").read_bytes() == (place / "picture.png").read_bytes()


# --- integrity ------------------------------------------------------------------------------------


def test_checksums_are_checked_by_the_library_too(place):
    import sta_cli
    from sta_cli.errors import StaError

    with pytest.raises(StaError, match="checksum"):
        sta_cli.load(place / "tampered")
    assert sta_cli.load(place / "art").sta.r1 == 8


def test_every_json_file_is_strict_and_follows_the_umask(place):
    import json

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    mask = os.umask(0)
    os.umask(mask)
    for p in (place / "art").iterdir():
        if p.suffix == ".json":
            strict(p.read_text())
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


def test_an_export_folder_takes_formats_of_its_own_model_only(place, tmp_path):
    """A second format joins an export folder only for the same weights, labels, preprocessing and
    settings: a model that differs only in its mean/std was merged in (config.json describing one
    model, model.pt the other)."""
    assert (
        run_cli("prune", "--model", "demo", "--r1", 8, "--mean", "0.4,0.4,0.4", "-o", "m8", cwd=tmp_path).exit_code == 0
    )
    assert run_cli("export", place / "art", "-o", "exp", "-f", "onnx", cwd=tmp_path).exit_code == 0
    r = run_cli("export", "m8", "-o", "exp", "-f", "torchscript", cwd=tmp_path)
    assert_one_line_error(r, "holds an export of another model")
    assert not (tmp_path / "exp" / "model.pt").exists()
    r = run_cli("export", place / "art", "-o", "exp", "-f", "torchscript", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr  # the same model: its second format joins the folder
    assert {"model.onnx", "model.pt"} <= {p.name for p in (tmp_path / "exp").iterdir()}
    r = run_cli("profile", "--model", "exp", "--runs", 1, cwd=tmp_path)  # said "model.pt is not a readable checkpoint"
    assert_one_line_error(r, "is an sta export folder (exported graphs, no weights)")
    r = run_cli("export", "m8", "-o", "exp", "-f", "torchscript", "--force", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr  # replaced whole: the records are m8's (they kept the old model's)
    config = __import__("json").loads((tmp_path / "exp" / "config.json").read_text())
    assert config["preprocessing"]["mean"] == [0.4] * 3 and list(config["exports"]) == ["torchscript"]
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.json", "manifest.json", "model.pt"]
