"""Clips for the model: decoded from a video file with PyAV, or a deterministic synthetic one.

A clip tensor is (views, C, T, H, W) float, normalised with the model's mean/std.

Decoding streams: frames are decoded in order and only those at the sampled indices are kept
(already resized to the model's short side), so a long video never sits in memory. Frames are
sampled by index, as the evaluation code of the released checkpoints does (decord reads by
index), so a variable-frame-rate video is sampled per decoded frame, not per second. The frame
count comes from the container's index when it has one (mp4, mov, avi), otherwise from a first
pass that counts packets without decoding them (mkv, webm, ...). Rotation metadata (the display
matrix, or an old-style `rotate` tag) is applied the way players do. Any pixel format FFmpeg
knows, grayscale included, is converted to RGB.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StaError

# Show a progress bar (stderr) when decoding at least this many frames or counting a file this big.
# What sta takes for a video when it looks through a folder (eval datasets, the demo's sample).
VIDEO_SUFFIXES = (
    ".mp4",
    ".avi",
    ".mkv",
    ".webm",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".ogv",
    ".3gp",
    ".ts",
)
PROGRESS_MIN_FRAMES = 300
PROGRESS_MIN_BYTES = 64 << 20
# A stream that ends before this share of what its header announces is reported as truncated.
TRUNCATED_BELOW = 0.9


# Whose evaluation code a model's clips follow (preprocessing "protocol"), down to its rounding:
#   "videomae": VideoMAE's test code (kinetics.py: frames on the stride grid from frame 0, the last
#       one repeated for short videos, view k starting int(k * step) grid frames in; crops int(k *
#       step) along the long side) and its resize, floored (`int(size * long / short)`, as
#       transformers' VideoMAEImageProcessor does too);
#   "mmaction": the Video Swin release's mmaction (SampleFrames test mode: clip k at
#       int(avg * (k + 1/2)), frame indices looped for short videos; ThreeCrop steps of
#       (long - crop) // 2; mmcv's resize rounded half up).
VIDEOMAE, MMACTION = "videomae", "mmaction"


class VideoWarning(UserWarning):
    """Something about a video the user should know (the clip is still usable): e.g. it was padded."""


@dataclass
class VideoInfo:
    path: str
    container: str
    codec: str
    width: int  # as displayed (rotation applied)
    height: int
    frames: int  # decodable video frames
    frames_from: str  # "index" (container metadata) or "packets" (counted)
    fps: float | None  # average rate, informative only (sampling is by frame index)
    duration: float | None  # seconds, from the header
    rotation: int  # degrees counter-clockwise applied to the decoded frames

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# --- tensors ------------------------------------------------------------------------------------


def resize_short(x: torch.Tensor, short: int, protocol: str = VIDEOMAE) -> torch.Tensor:
    """(..., H, W) float -> short side = `short`, aspect kept (bilinear, antialiased); the long side
    rounded as the protocol's reference does."""
    h, w = x.shape[-2:]
    size = (short, _long_side(w, h, short, protocol)) if h <= w else (_long_side(h, w, short, protocol), short)
    if (h, w) == size:
        return x
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(1, -1, h, w), size=size, mode="bilinear", align_corners=False, antialias=True)
    return y.reshape(*lead, *size)


def _long_side(long: int, short: int, target: int, protocol: str) -> int:
    if protocol == MMACTION:
        return max(target, int(long * (target / short) + 0.5))  # mmcv's _scale_size
    return max(target, int(target * long / short))  # VideoMAE's get_resize_sizes, transformers'


def crop_starts(length: int, crop: int, count: int, protocol: str = VIDEOMAE) -> list[int]:
    """`count` crop offsets spread over `length` as the protocol's reference spreads them (one crop: the centre)."""
    if count == 1:
        return [(length - crop) // 2]
    if protocol == MMACTION:  # ThreeCrop's step, whole pixels
        return [i * ((length - crop) // (count - 1)) for i in range(count)]
    return [int(i * (length - crop) / (count - 1)) for i in range(count)]


def spatial_crops(x: torch.Tensor, crop: int, count: int, protocol: str = VIDEOMAE) -> list[torch.Tensor]:
    """Square crops of (..., H, W): `count` of them along the longer side, centred on the shorter
    (the VideoMAE test protocol: 3 crops covering the long axis)."""
    h, w = x.shape[-2:]
    if min(h, w) < crop:
        raise StaError(f"frames of {w}x{h} are smaller than the {crop}px crop")  # resize_short prevents it
    along_w = w >= h
    top = [(h - crop) // 2] * count if along_w else crop_starts(h, crop, count, protocol)
    left = crop_starts(w, crop, count, protocol) if along_w else [(w - crop) // 2] * count
    return [x[..., t : t + crop, left_ : left_ + crop] for t, left_ in zip(top, left)]


def standardise(x: torch.Tensor, pre: dict) -> torch.Tensor:
    """(C, T, H, W) float pixels in 0..255 -> the model's input scale and mean/std."""
    x = x / 255.0 * pre.get("value_range", 1.0)
    mean = torch.tensor(pre["mean"], dtype=x.dtype).view(-1, 1, 1, 1)
    std = torch.tensor(pre["std"], dtype=x.dtype).view(-1, 1, 1, 1)
    return (x - mean) / std


def denormalise(x: torch.Tensor, pre: dict) -> np.ndarray:
    """One normalised view (C, T, H, W) -> (T, H, W, C) uint8 pixels, for pictures."""
    mean = torch.tensor(pre["mean"]).view(-1, 1, 1, 1)
    std = torch.tensor(pre["std"]).view(-1, 1, 1, 1)
    pixels = (x.float().cpu() * std + mean) * 255.0 / pre.get("value_range", 1.0)
    return pixels.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def normalise(frames: torch.Tensor, pre: dict) -> torch.Tensor:
    """(T, H, W, C) uint8 -> (C, T, crop, crop) float: short-side resize, centre crop, mean/std."""
    x = resize_short(frames.permute(3, 0, 1, 2).float(), pre["short_side"], protocol_of(pre))  # (C, T, H, W)
    return standardise(spatial_crops(x, pre["crop_size"], 1)[0], pre)


def synthetic_frames(num_frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """A textured static background with a bright square moving across it. -> (T, size, size, 3) uint8.

    Deterministic, and shaped like real footage for STA's purposes: most tokens repeat over time,
    a few carry the motion.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    background = np.stack([np.sin(6.3 * (xx + yy)), np.cos(9.4 * xx * yy), np.sin(4.1 * yy)], -1)
    background = (0.5 + 0.25 * background + 0.1 * rng.standard_normal((size, size, 3))).clip(0, 1)
    frames = np.repeat(background[None], num_frames, 0)
    side = size // 5
    for t in range(num_frames):
        x0 = int((size - side) * t / max(1, num_frames - 1))
        y0 = size // 3
        frames[t, y0 : y0 + side, x0 : x0 + side] = (0.95, 0.2, 0.1)
    return torch.from_numpy((frames * 255).astype(np.uint8))


def synthetic_clip(pre: dict, seed: int = 0) -> torch.Tensor:
    """(1, C, T, H, W) normalised synthetic clip matching the model's preprocessing."""
    return normalise(synthetic_frames(pre["num_frames"], pre["crop_size"], seed), pre)[None]


# --- sampling -----------------------------------------------------------------------------------


def window_length(num_frames: int, stride: int) -> int:
    """Frames a clip of `num_frames` at `stride` spans in the video."""
    return (num_frames - 1) * stride + 1


def protocol_of(pre: dict) -> str:
    return pre.get("protocol", VIDEOMAE)


def clip_indices(count: int, num_frames: int, stride: int, clips: int = 1, protocol: str = VIDEOMAE) -> list[list[int]]:
    """Frame indices of `clips` temporal windows over a video of `count` frames, as the protocol's
    reference spreads them (see VIDEOMAE / MMACTION). One VideoMAE window: the centre one (its test
    code has no single-view rule), the last frame repeated for a short video."""
    if protocol == MMACTION:
        avg = (count - num_frames * stride + 1) / clips
        starts = [int(avg * (k + 0.5)) if count > num_frames * stride - 1 else 0 for k in range(clips)]
        return [[(s + i * stride) % count for i in range(num_frames)] for s in starts]
    if clips == 1:
        s = max(0, count - window_length(num_frames, stride)) // 2
        return [[min(s + i * stride, count - 1) for i in range(num_frames)]]
    grid = list(range(0, count, stride))
    grid += grid[-1:] * (num_frames - len(grid))
    step = (len(grid) - num_frames) / (clips - 1)
    return [grid[int(k * step) : int(k * step) + num_frames] for k in range(clips)]


def centre_indices(count: int, num_frames: int, stride: int) -> list[int]:
    """num_frames indices at `stride` around the middle of the video; short videos repeat their last frame."""
    return clip_indices(count, num_frames, stride, 1)[0]


def parse_views(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """'TxS' (temporal clips x spatial crops) -> (T, S). None -> (1, 1)."""
    if text is None:
        return 1, 1
    if isinstance(text, tuple):
        t, s = text
    else:
        parts = str(text).lower().replace("×", "x").split("x")
        try:
            t, s = (int(p) for p in parts)
        except ValueError:
            raise StaError(
                f"--views must look like TxS (temporal clips x spatial crops, e.g. 5x3), got {text!r}"
            ) from None
    if not (1 <= t <= 64 and 1 <= s <= 16):
        raise StaError(f"--views {t}x{s}: need 1 <= T <= 64 temporal clips and 1 <= S <= 16 spatial crops")
    return t, s


# --- decoding -----------------------------------------------------------------------------------


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise StaError(f"{path} is a directory, not a video")
    if not path.exists():
        raise StaError(f"no such video file: {path}")
    if not path.is_file():
        raise StaError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise StaError(f"{path} is empty (0 bytes)")


def _ffmpeg_reason(e: Exception) -> str:
    """FFmpeg's message without the errno and file name PyAV adds."""
    text = getattr(e, "strerror", None) or str(e)
    return str(text).rstrip(".")


@contextlib.contextmanager
def open_video(path: Path) -> Iterator:
    """(container, first video stream) with every FFmpeg failure turned into one StaError line."""
    import av

    path = Path(path)
    _check_path(path)
    try:
        # av < 19 raises on undecodable metadata unless told to ignore it; av 19 always decodes it leniently and dropped the option
        container = av.open(
            str(path), **({"metadata_errors": "ignore"} if int(av.__version__.split(".")[0]) < 19 else {})
        )
    except av.FFmpegError as e:
        raise StaError(f"{path} is not a video FFmpeg can read, or is corrupt ({_ffmpeg_reason(e)})") from None
    except (OSError, ValueError) as e:
        raise StaError(f"cannot open {path}: {e}") from None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            what = f"only {' and '.join(kinds)}" if kinds else "no streams"
            raise StaError(f"{path} has no video stream ({what})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: faster decoding, same frames
        yield container, stream
    except av.FFmpegError as e:
        raise StaError(f"cannot decode {path}: corrupt or truncated stream ({_ffmpeg_reason(e)})") from None
    finally:
        container.close()


def _seconds(value, time_base) -> float | None:
    return float(value * time_base) if value is not None and time_base is not None else None


def _header_duration(container, stream) -> float | None:
    """Seconds of video the header announces: the stream's duration, Matroska's DURATION tag, or
    the container's when the video is its only stream."""
    if stream.duration:
        return _seconds(stream.duration, stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _tag_rotation(stream) -> int:
    """Old-style `rotate` tag (degrees clockwise) as counter-clockwise degrees; 0 if absent."""
    try:
        return -int(float((stream.metadata or {}).get("rotate", 0)))
    except ValueError:
        return 0


def _progress(show: bool, description: str, total: float | None):
    """A rich progress bar on stderr, or a no-op stand-in."""
    if not show:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )

    @contextlib.contextmanager
    def run():
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)

    return run()


def count_frames(path: Path, show_progress: bool = True) -> tuple[int, str, float | None]:
    """(frame count, "index" | "packets", seconds of video the stream really holds).

    The container's index is used when it states a count; otherwise the packets are counted
    without being decoded (a demux pass, far cheaper than decoding).
    """
    with open_video(path) as (container, stream):
        if stream.frames and stream.frames > 0:
            return int(stream.frames), "index", None
        size = path.stat().st_size
        count, end = 0, None
        with _progress(
            show_progress and size >= PROGRESS_MIN_BYTES, f"counting frames of {path.name}", size
        ) as advance:
            for packet in container.demux(stream):
                if not packet.size:  # the flush packet at the end
                    continue
                count += 1
                if packet.pts is not None:
                    t = _seconds(packet.pts + (packet.duration or 0), stream.time_base)
                    end = t if end is None else max(end, t)
                if advance:
                    advance(packet.size)
        start = _seconds(stream.start_time, stream.time_base) or 0.0
        return count, "packets", (end - start if end is not None else None)


def _display_rotation(frame, stream) -> int:
    rot = frame.rotation or _tag_rotation(stream)
    return int(round(rot / 90.0)) * 90 % 360


def _frame_to_tensor(frame, rotation: int, short_side: int | None, protocol: str = VIDEOMAE) -> torch.Tensor:
    """Decoded frame -> (3, H, W) uint8 RGB, rotated for display, short side resized (None: kept)."""
    rgb = frame.to_ndarray(format="rgb24")  # any pixel format, grayscale included
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)  # counter-clockwise, as the display matrix says
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    if short_side is None:
        return x
    return resize_short(x.float(), short_side, protocol).round().clamp(0, 255).to(torch.uint8)


@dataclass
class Decoded:
    frames: dict[int, torch.Tensor]  # index -> (3, H, W) uint8, only the wanted ones
    count: int  # frames decoded (the stream ended early if this is <= the last wanted index)
    rotation: int  # degrees counter-clockwise applied
    size: tuple[int, int]  # (width, height) as displayed, before resizing
    damaged: list[int] = field(default_factory=list)  # frames the decoder flagged corrupt (concealed errors)


def _decode_until_damage(container, stream) -> Iterator:
    """The stream's frames, ending at the first damaged packet once some frames have decoded.

    A cut file ends in a partial packet: av 18 and newer stop there, av 17 raises InvalidDataError.
    Either way the caller sees fewer frames than announced and decides (see read_clip); a stream
    whose very first packet is damaged still raises.
    """
    import av

    frames, decoded = container.decode(stream), False
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            if not decoded:
                raise
            return
        decoded = True
        yield frame


def decode_frames(
    path: Path, wanted: set[int], short_side: int | None, show_progress: bool = True, protocol: str = VIDEOMAE
) -> Decoded:
    """Decode in order up to the last wanted frame, keeping only the wanted ones (resized at once,
    so memory holds len(wanted) small frames whatever the video's length)."""
    last = max(wanted)
    kept: dict[int, torch.Tensor] = {}
    index, rotation, size, damaged = -1, 0, (0, 0), []
    show = show_progress and last + 1 >= PROGRESS_MIN_FRAMES
    with open_video(path) as (container, stream), _progress(show, f"decoding {path.name}", last + 1) as advance:
        for frame in _decode_until_damage(container, stream):
            index += 1
            if advance:
                advance()
            if getattr(frame, "is_corrupt", False):  # the decoder concealed an error (PyAV >= 9)
                damaged.append(index)
            if index in wanted:
                rotation = _display_rotation(frame, stream)
                size = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
                kept[index] = _frame_to_tensor(frame, rotation, short_side, protocol)
            if index >= last:
                break
    return Decoded(kept, index + 1, rotation, size, damaged)


@dataclass
class Clip:
    """A decoded, preprocessed clip: (views, C, T, H, W), the video it came from, what was sampled."""

    views: torch.Tensor
    info: VideoInfo
    indices: list[list[int]]  # frame indices per temporal clip
    grid: tuple[int, int]  # (temporal clips, spatial crops); views are clip-major


def read_clip(path: Path, pre: dict, views: tuple[int, int] | str | None = None, show_progress: bool = True) -> Clip:
    """Sample, decode and preprocess a video as the model was evaluated (see the module docstring).

    A video shorter than one window is padded as the protocol's reference pads it, with a VideoWarning.
    """
    path = Path(path)
    n_clips, n_crops = parse_views(views)
    count, frames_from, packet_seconds = count_frames(path, show_progress)
    with open_video(path) as (container, stream):
        header_seconds = _header_duration(container, stream)
        codec, fmt = stream.codec_context.name, container.format.name
        fps = float(stream.average_rate) if stream.average_rate else None
    if count == 0:
        raise StaError(f"{path} has a video stream with no frames in it (empty, truncated or corrupt)")
    if packet_seconds is not None and header_seconds and packet_seconds < TRUNCATED_BELOW * header_seconds:
        raise StaError(
            f"{path} is truncated or corrupt: its header announces {header_seconds:.2f}s of video, the stream holds {packet_seconds:.2f}s"
        )

    num_frames, stride, protocol = pre["num_frames"], pre["frame_stride"], protocol_of(pre)
    indices = clip_indices(count, num_frames, stride, n_clips, protocol)
    dec = decode_frames(path, {i for clip in indices for i in clip}, pre["short_side"], show_progress, protocol)
    if dec.count == 0:
        raise StaError(f"{path} has no decodable video frames")
    if dec.count <= max(i for clip in indices for i in clip):
        # The stream ended before the count promised (an index that overcounts, e.g. an edit list,
        # or a cut file): sample again over the frames that exist, unless most of them are missing.
        if dec.count < TRUNCATED_BELOW * count:
            raise StaError(f"{path} is truncated or corrupt: {count} frames announced, only {dec.count} decode")
        warnings.warn(
            f"{path.name}: {count} frames announced, {dec.count} decode: sampled over those", VideoWarning, stacklevel=2
        )
        count = dec.count
        indices = clip_indices(count, num_frames, stride, n_clips, protocol)
        dec = decode_frames(path, {i for clip in indices for i in clip}, pre["short_side"], show_progress, protocol)

    if dec.damaged:
        # Concealed errors: the flagged frames, and frames predicted from them up to the next
        # keyframe, can be garbage, so the prediction can be wrong without any other sign.
        warnings.warn(
            f"{path.name} is damaged: the decoder flagged {len(dec.damaged)} frame(s) as corrupt (first: frame "
            f"{dec.damaged[0]}, sampled frames {indices[0][0]}-{indices[-1][-1]}); the result may be wrong",
            VideoWarning,
            stacklevel=2,
        )
    span = window_length(num_frames, stride)
    if count < span:
        warnings.warn(
            f"{path.name} has {count} frames, fewer than the {span} one clip spans ({num_frames} frames at stride "
            f"{stride}): padded by {'looping it' if protocol == MMACTION else 'repeating its last frame'}",
            VideoWarning,
            stacklevel=2,
        )
    out = []
    for clip in indices:
        x = torch.stack([dec.frames[i] for i in clip], 1).float()  # (C, T, H, W)
        out += [standardise(c, pre) for c in spatial_crops(x, pre["crop_size"], n_crops, protocol)]
    info = VideoInfo(
        path=str(path),
        container=fmt,
        codec=codec,
        width=dec.size[0],
        height=dec.size[1],
        frames=count,
        frames_from=frames_from,
        fps=fps,
        duration=header_seconds,
        rotation=dec.rotation,
    )
    return Clip(torch.stack(out), info, indices, (n_clips, n_crops))


def load_clip(
    path: Path, pre: dict, views: tuple[int, int] | str | None = None, show_progress: bool = True
) -> torch.Tensor:
    """A video file, preprocessed: (views, C, T, H, W); one centred clip and crop unless `views` = TxS."""
    return read_clip(path, pre, views, show_progress).views


def read_frames(path: Path, indices_for) -> torch.Tensor:
    """The frames `indices_for(frame_count)` picks, at their decoded size. -> (T, H, W, 3) uint8."""
    path = Path(path)
    count, _, _ = count_frames(path)
    if count == 0:
        raise StaError(f"{path} has a video stream with no frames")
    idx = indices_for(count)
    dec = decode_frames(path, set(idx), short_side=None)
    if not dec.frames:
        raise StaError(f"{path} has no decodable video frames")
    last = dec.frames[max(dec.frames)]  # an index that overcounted: repeat the last frame decoded
    return torch.stack([dec.frames.get(i, last) for i in idx]).permute(0, 2, 3, 1)


__all__ = [
    "Clip",
    "VideoInfo",
    "VideoWarning",
    "clip_indices",
    "centre_indices",
    "denormalise",
    "load_clip",
    "normalise",
    "parse_views",
    "read_clip",
    "spatial_crops",
    "synthetic_clip",
    "synthetic_frames",
]
