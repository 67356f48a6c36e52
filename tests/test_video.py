"""Video input: containers and codecs FFmpeg reads, sampling, rotation, odd inputs, bad files.

Every video is generated here with PyAV. Frame i is a flat grey of brightness `level(i)` with a red
marker in its top-left corner, so the decoded pixels tell which frames were sampled.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from sta_cli.errors import StaError  # noqa: E402
from sta_cli.io import video  # noqa: E402

PRE = dict(num_frames=4, frame_stride=3, short_side=32, crop_size=32, mean=[0.0] * 3, std=[1.0] * 3, value_range=255.0)


def level(i: int) -> int:
    return 20 + (6 * i) % 228  # 6 grey levels apart survive lossy codecs (unique for the first 38 frames)


def frame_image(i: int, w: int, h: int) -> np.ndarray:
    img = np.full((h, w, 3), level(i), np.uint8)
    img[: h // 4, : w // 4] = (255, 0, 0)
    return img


def write_video(
    path: Path,
    codec: str,
    n: int = 30,
    w: int = 64,
    h: int = 48,
    pix_fmt: str | None = None,
    rotation: int | None = None,
    pts_ms: list[int] | None = None,
    options: dict | None = None,
) -> Path:
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height = w, h
        s.bit_rate = 4_000_000  # near-lossless: the grey level identifies the frame
        if pix_fmt:
            s.pix_fmt = pix_fmt
        if rotation is not None:
            s.set_display_rotation(rotation)
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(frame_image(i, w, h), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def encoder(name: str) -> bool:
    return name in av.codecs_available


CONTAINERS = [
    ("h264.mp4", "libx264", None),
    ("vp9.webm", "libvpx-vp9", None),
    ("vp8.webm", "libvpx", None),
    ("h264.mkv", "libx264", None),
    ("mpeg4.avi", "mpeg4", None),
    ("mjpeg.avi", "mjpeg", "yuvj420p"),
    ("h264.mov", "libx264", None),
]


def grey_levels(views: torch.Tensor) -> np.ndarray:
    """Mean brightness per frame of the first view, marker excluded (PRE keeps raw 0..255 pixels)."""
    x = views[0]  # (C, T, H, W)
    return x[:, :, x.shape[-2] // 2 :, :].mean(dim=(0, 2, 3)).numpy()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.mark.parametrize("name,codec,pix", CONTAINERS)
def test_containers_and_codecs(videos, name, codec, pix):
    if not encoder(codec):
        pytest.skip(f"this PyAV build cannot encode {codec}")
    path = write_video(videos / name, codec, pix_fmt=pix)
    clip = video.read_clip(path, PRE)
    assert clip.views.shape == (1, 3, 4, 32, 32)
    # 30 frames, a 10-frame window (4 at stride 3) in the middle: frames 10, 13, 16, 19.
    assert clip.indices == [[10, 13, 16, 19]]
    assert np.allclose(grey_levels(clip.views), [level(i) for i in (10, 13, 16, 19)], atol=3)
    assert clip.info.frames == 30 and (clip.info.width, clip.info.height) == (64, 48)
    # Containers with an index state the count; Matroska/WebM get their packets counted.
    assert clip.info.frames_from == ("packets" if name.endswith((".mkv", ".webm")) else "index")


def videomae_test_views(n: int, clip_len: int, rate: int, segments: int) -> list[list[int]]:
    """VideoMAE's kinetics.py in test mode, written as it reads: the stride grid from frame 0 (its
    last frame repeated up to clip_len), view k from grid entry int(k * step)."""
    all_index = list(range(0, n, rate))
    while len(all_index) < clip_len:
        all_index.append(all_index[-1])
    step = max(1.0 * (len(all_index) - clip_len) / (segments - 1), 0)
    return [all_index[int(k * step) : int(k * step) + clip_len] for k in range(segments)]


def mmaction_test_clips(n: int, clip_len: int, interval: int, num_clips: int) -> list[list[int]]:
    """The Video Swin release's mmaction SampleFrames._get_test_clips, then out_of_bound_opt='loop'."""
    ori_clip_len = clip_len * interval
    avg_interval = (n - ori_clip_len + 1) / float(num_clips)
    if n > ori_clip_len - 1:
        offsets = (np.arange(num_clips) * avg_interval + avg_interval / 2.0).astype(int)
    else:
        offsets = np.zeros(num_clips, dtype=int)
    return np.mod(offsets[:, None] + np.arange(clip_len)[None] * interval, n).tolist()


def test_clip_indices_follow_the_owners_test_code():
    """Multi-view clips start where the checkpoints' own evaluation code starts them (sta spread
    them over all frames, view 2 of a 300-frame video at frame 60 where VideoMAE's code takes 56,
    and padded Swin clips by repeating instead of looping)."""
    for n in (10, 31, 64, 100, 300, 1001):
        assert video.clip_indices(n, 16, 4, 5, video.VIDEOMAE) == videomae_test_views(n, 16, 4, 5), n
        assert video.clip_indices(n, 16, 2, 2, video.VIDEOMAE) == videomae_test_views(n, 16, 2, 2), n
        for clips in (1, 4):
            assert video.clip_indices(n, 32, 2, clips, video.MMACTION) == mmaction_test_clips(n, 32, 2, clips), n
    assert video.clip_indices(100, 16, 4, 1) == [[19 + 4 * i for i in range(16)]]  # one view: centred, (100 - 61) // 2
    assert video.clip_indices(5, 4, 2, 1) == [[0, 2, 4, 4]]  # shorter than the window: last frame repeats
    assert video.window_length(16, 4) == 61


def test_resize_and_crops_round_as_the_references():
    """4:3 frames to a 224 short side: VideoMAE and transformers' processor floor the long side (298,
    sta rounded to 299), mmcv rounds half up; 3 crops start at int(k * step) (VideoMAE) or k * the
    whole-pixel step (mmaction's ThreeCrop)."""
    x = torch.zeros(1, 240, 320)
    assert video.resize_short(x, 224, video.VIDEOMAE).shape[-1] == 298
    assert video.resize_short(torch.zeros(1, 288, 352), 256, video.MMACTION).shape[-1] == 313  # 312.89
    assert video.crop_starts(298, 224, 3, video.VIDEOMAE) == [0, 37, 74]
    assert video.crop_starts(341, 224, 3, video.MMACTION) == [0, 58, 116]


def test_spatial_crops_cover_the_long_side():
    x = torch.arange(40 * 100).float().view(1, 1, 40, 100)
    left, mid, right = video.spatial_crops(x, 40, 3)
    assert left[0, 0, 0, 0] == 0 and right[0, 0, 0, -1] == 99 and mid[0, 0, 0, 0] == 30
    tall = x.transpose(-1, -2)  # 100 high, 40 wide: crops go down the height
    top, _, bottom = video.spatial_crops(tall, 40, 3)
    assert top[0, 0, 0, 0] == 0 and bottom[0, 0, -1, 0] == 99  # bottom crop ends on the last row


def test_views_temporal_by_spatial(videos):
    path = write_video(videos / "wide.mp4", "libx264", n=30, w=96, h=32)
    clip = video.read_clip(path, PRE, "3x2")
    assert clip.views.shape == (6, 3, 4, 32, 32) and clip.grid == (3, 2)
    assert [c[0] for c in clip.indices] == [0, 9, 18]  # VideoMAE's test views: on the stride-3 grid
    # views are clip-major: view 2 is the second clip's first crop (frames 9, 12, ...)
    assert np.allclose(grey_levels(clip.views[2:3]), [level(i) for i in (9, 12, 15, 18)], atol=3)
    # the first crop holds the red marker (top-left of the frame), the second does not
    red = lambda v: float(v[0, 0, :8, :8].mean() - v[1, 0, :8, :8].mean())  # noqa: E731
    assert red(clip.views[0]) > 100 and red(clip.views[1]) < 20


def test_parse_views():
    assert video.parse_views("5x3") == (5, 3) and video.parse_views(None) == (1, 1)
    for bad in ("5", "ax3", "0x1", "2x3x4"):
        with pytest.raises(StaError):
            video.parse_views(bad)


def test_rotation_metadata_is_applied(videos):
    # The display matrix says: show this 64x48 picture rotated 90 degrees counter-clockwise.
    path = write_video(videos / "rotated.mp4", "libx264", rotation=90)
    dec = video.decode_frames(path, {0}, short_side=None)
    frame = dec.frames[0].permute(1, 2, 0).numpy().astype(int)  # (H, W, 3)
    assert dec.rotation == 90 and frame.shape == (64, 48, 3) and dec.size == (48, 64)
    # the marker was top-left in the stored picture; a 90 degree counter-clockwise turn puts it bottom-left
    assert frame[-4, 4, 0] > 200 and frame[-4, 4, 1] < 60
    assert frame[4, 4, 0] < 150 and frame[4, -4, 0] < 150
    clip = video.read_clip(path, PRE)
    assert (clip.info.width, clip.info.height, clip.info.rotation) == (48, 64, 90)


def test_rotate_tag_fallback():
    class Frame:
        rotation = 0

    class Stream:
        metadata = {"rotate": "90"}  # old-style tag: degrees clockwise

    assert video._display_rotation(Frame(), Stream()) == 270


def test_grayscale_and_odd_size(videos):
    if not encoder("ffv1"):
        pytest.skip("no ffv1 encoder")
    gray = write_video(videos / "gray.mkv", "ffv1", pix_fmt="gray")
    x = video.read_clip(gray, PRE).views
    assert x.shape == (1, 3, 4, 32, 32)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])  # grey replicated to RGB
    odd = write_video(videos / "odd.mkv", "ffv1", w=61, h=37, pix_fmt="yuv444p")
    clip = video.read_clip(odd, PRE, "1x3")
    assert clip.views.shape == (3, 3, 4, 32, 32) and (clip.info.width, clip.info.height) == (61, 37)


def test_variable_frame_rate_is_sampled_by_frame(videos):
    gaps = [20 if i % 2 else 70 for i in range(30)]
    pts = [int(sum(gaps[:i])) for i in range(30)]
    path = write_video(videos / "vfr.mkv", "libx264", pts_ms=pts)
    with av.open(str(path)) as c:
        times = [f.time for f in c.decode(video=0)]
    assert len(set(np.round(np.diff(times), 3))) > 1  # really variable
    clip = video.read_clip(path, PRE)
    assert clip.info.frames == 30 and clip.indices == [[10, 13, 16, 19]]
    assert np.allclose(grey_levels(clip.views), [level(i) for i in (10, 13, 16, 19)], atol=3)


def test_short_video_is_padded_with_a_warning(videos):
    path = write_video(videos / "short.mp4", "libx264", n=5)
    with pytest.warns(video.VideoWarning, match="padded by repeating"):
        clip = video.read_clip(path, PRE)
    assert clip.indices == [[0, 3, 4, 4]]
    g = grey_levels(clip.views)
    assert np.allclose(g, [level(i) for i in (0, 3, 4, 4)], atol=3) and g[2] == g[3]


def test_decoding_streams_and_keeps_only_sampled_frames(videos, monkeypatch):
    path = write_video(videos / "long.mkv", "libx264", n=60)
    monkeypatch.setattr(video, "PROGRESS_MIN_FRAMES", 1)  # the progress bar path runs too
    dec = video.decode_frames(path, {3, 7, 20}, short_side=16)
    assert sorted(dec.frames) == [3, 7, 20]  # nothing else held
    assert dec.count == 21  # stopped after the last wanted frame
    assert dec.frames[7].shape == (3, 16, round(64 * 16 / 48)) and dec.frames[7].dtype == torch.uint8


def test_index_that_overcounts_is_resampled(videos):
    path = write_video(videos / "fast.mp4", "libx264", n=60, options={"movflags": "faststart"})
    data = path.read_bytes()
    # Cut the last few frames off: the index still says 60, fewer decode. Sampling adapts.
    short = videos / "cut_end.mp4"
    short.write_bytes(data[: int(len(data) * 0.985)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", video.VideoWarning)  # the window (58 frames) is longer than what is left
        clip = video.read_clip(short, dict(PRE, frame_stride=19))
    assert 54 <= clip.info.frames < 60 and clip.indices[0][-1] == clip.info.frames - 1
    # Cut in half: that is a broken file, not a shorter video.
    half = videos / "cut_half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(StaError, match="truncated"):
        video.read_clip(half, PRE)


def test_damage_the_decoder_conceals_is_a_warning(tmp_path):
    """Bytes garbled mid-file in a Matroska file: frames still decode (FFmpeg conceals the errors,
    later frames predicted from garbage), so only the decoder's corrupt flag tells."""
    if not encoder("mpeg4"):
        pytest.skip("no mpeg4 encoder")
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(100):
            image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error", video.VideoWarning)
        video.read_clip(path, PRE)  # the intact file: no warning
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 5000] = bytes(b ^ 0x5A for b in data[middle : middle + 5000])
    path.write_bytes(bytes(data))
    with pytest.warns(video.VideoWarning, match="is damaged: the decoder flagged"):
        video.read_clip(path, dict(PRE, frame_stride=20))


def test_legacy_read_frames(videos):
    path = write_video(videos / "legacy.mp4", "libx264", n=12)
    frames = video.read_frames(path, lambda n: [0, n - 1])
    assert frames.shape == (2, 48, 64, 3) and abs(int(frames[1, 40, 40, 0]) - level(11)) <= 3


# --- bad input ------------------------------------------------------------------------------------


def make_bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a phrase the error must contain). Shared with the CLI tests."""
    folder.mkdir(parents=True, exist_ok=True)
    bad: dict[str, tuple[Path, str]] = {}
    bad["missing"] = (folder / "nope.mp4", "no such video file")
    bad["directory"] = (folder, "is a directory")
    text = folder / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    bad["not_a_video"] = (text, "not a video FFmpeg can read")
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    bad["empty"] = (empty, "empty")
    audio = folder / "audio.m4a"
    with av.open(str(audio), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    bad["audio_only"] = (audio, "no video stream (only audio)")
    zero = folder / "zero_frames.mkv"
    with av.open(str(zero), "w") as c:  # a video stream that never gets a frame, next to some audio
        v = c.add_stream("libx264", rate=25)
        v.width, v.height = 64, 48
        a = c.add_stream("mp2", rate=16000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
        fr.sample_rate, fr.pts = 16000, 0
        for p in list(a.encode(fr)) + list(a.encode()):
            c.mux(p)
    bad["zero_frames"] = (zero, "no frames in it")
    mp4 = write_video(folder / "whole.mp4", "libx264")
    cut = folder / "truncated.mp4"
    cut.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])  # index (moov) at the end: gone
    bad["truncated_mp4"] = (cut, "corrupt")
    webm = write_video(folder / "whole.webm", "libvpx", n=40) if encoder("libvpx") else None
    if webm is not None:
        cut = folder / "truncated.webm"
        cut.write_bytes(webm.read_bytes()[: webm.stat().st_size // 3])
        bad["truncated_webm"] = (cut, "truncated")
    garbage = folder / "garbage.mkv"
    data = bytearray(write_video(folder / "whole.mkv", "libx264").read_bytes())
    rng = np.random.default_rng(0)
    start = data.find(b"\x1f\x43\xb6\x75") + 40  # into the first Matroska cluster: header intact, frames noise
    data[start:] = rng.integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    garbage.write_bytes(bytes(data))
    bad["corrupt_stream"] = (garbage, "corrupt")
    return bad


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "name",
    [
        "missing",
        "directory",
        "not_a_video",
        "empty",
        "audio_only",
        "zero_frames",
        "truncated_mp4",
        "truncated_webm",
        "corrupt_stream",
    ],
)
def test_bad_input_is_one_clear_error(bad_inputs, name):
    if name not in bad_inputs:
        pytest.skip("encoder not available")
    path, phrase = bad_inputs[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no half-usable clip behind a warning either
        with pytest.raises(StaError) as e:
            video.read_clip(path, PRE)
    message = str(e.value)
    assert phrase in message and "\n" not in message and str(path) in message
