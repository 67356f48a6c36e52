"""A synthetic action dataset for the packaged demo model: deterministic clips from (class, seed).

Each clip has what STA relies on in real footage:
- temporal redundancy: a static textured background and static distractor shapes fill most of
  every frame, with only faint sensor noise changing from frame to frame;
- semantics: one small "actor" shape (about one or two 8-pixel patches wide) does the action; the
  distractors are drawn from the same shapes and colours, so only what the actor does over time
  tells the classes apart.

Shapes are drawn with antialiased signed distance functions, vectorised over frames. Geometry is
defined on a 64-pixel canvas and scaled with `size`, so larger renders show the same clip.
"""

from __future__ import annotations

import numpy as np

LABELS = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "rotating",
    "growing",
    "shrinking",
    "blinking",
)
NUM_FRAMES = 16
SIZE = 64
SHAPES = ("square", "triangle", "bar")
ACTOR_HALF = (3.5, 5.5)  # half-size range of the actor, 64-px units
# Seeds of different splits never overlap: a clip's seed is SPLIT_BASE[split] + index.
SPLIT_BASE = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}


def _sdf(kind: str, u: np.ndarray, v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, <0 inside) of a shape of half-size s in its own rotated frame (u, v)."""
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) - s
    if kind == "bar":  # elongated, so its rotation is visible at patch resolution
        return np.maximum(np.abs(u) - 1.3 * s, np.abs(v) - 0.45 * s)
    # equilateral triangle with circumradius 1.3 s: three half-planes at distance 0.65 s
    d = None
    for k in range(3):
        a = np.pi / 2 + 2 * np.pi * k / 3
        e = u * np.cos(a) + v * np.sin(a) - 0.65 * s
        d = e if d is None else np.maximum(d, e)
    return d


def _draw(canvas, kind, colour, cx, cy, half, angle, visible, scale):
    """Blend one shape into canvas (T, H, W, 3) in place; per-frame arrays of length T (64-px units).

    Only the box the shape can reach over the clip is computed.
    """
    T, H, W, _ = canvas.shape
    cx, cy, half = (np.broadcast_to(np.asarray(a, float), (T,)) for a in (cx, cy, half))
    reach = 1.4 * half.max() + 1.5  # circumradius of every shape, plus the antialiasing ramp
    x0, x1 = (np.clip([(cx.min() - reach) * scale, (cx.max() + reach) * scale + 1], 0, W)).astype(int)
    y0, y1 = (np.clip([(cy.min() - reach) * scale, (cy.max() + reach) * scale + 1], 0, H)).astype(int)
    ys, xs = (np.arange(y0, y1) + 0.5) / scale, (np.arange(x0, x1) + 0.5) / scale
    dx = xs[None, None, :] - cx[:, None, None]
    dy = ys[None, :, None] - cy[:, None, None]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    d = _sdf(kind, u, v, half[:, None, None]) * scale
    alpha = np.clip(0.5 - d, 0.0, 1.0) * np.asarray(visible, float)[:, None, None]
    box = canvas[:, y0:y1, x0:x1]
    box += alpha[..., None] * (np.asarray(colour)[None, None, None] - box)


def _background(rng: np.random.Generator, size: int, scale: float, clutter: float) -> np.ndarray:
    """Static texture: a few coloured gratings over smooth colour blotches, muted contrast. -> (H, W, 3)."""
    yy, xx = np.mgrid[0:size, 0:size] / scale  # 64-px units
    base = rng.uniform(0.12, 0.42, 3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    for _ in range(rng.integers(2, 4)):
        theta, freq = rng.uniform(0, np.pi), rng.uniform(2, 10) / 64  # cycles per pixel
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        img += clutter * 0.08 * wave[..., None] * rng.uniform(-1, 1, 3)
    # smooth blotches: a coarse random grid, bilinearly upsampled
    coarse = rng.uniform(-0.12, 0.12, (5, 5, 3))
    g = np.clip(np.mgrid[0:size, 0:size] / size * 4, 0, 4 - 1e-6)
    i, j = g.astype(int)
    fy, fx = (g[0] - i)[..., None], (g[1] - j)[..., None]
    img += clutter * (
        coarse[i, j] * (1 - fy) * (1 - fx)
        + coarse[i + 1, j] * fy * (1 - fx)
        + coarse[i, j + 1] * (1 - fy) * fx
        + coarse[i + 1, j + 1] * fy * fx
    )
    return img


# Objects (actor and distractors alike) are bright, backgrounds darker: "where the objects are" is
# easy to see, "which one acts, and how" is the task.
PALETTE = np.array([(1.0, 1.0, 1.0), (1.0, 0.92, 0.25), (0.3, 1.0, 1.0), (1.0, 0.45, 0.95)])


def _colour(rng: np.random.Generator) -> np.ndarray:
    return PALETTE[rng.integers(len(PALETTE))] * rng.uniform(0.9, 1.0)


def _place(rng, half, margin, avoid, min_dist):
    """A random centre (64-px units) at least `min_dist` from every point in `avoid`."""
    for _ in range(50):
        p = rng.uniform(margin + half, SIZE - margin - half, 2)
        if all(np.hypot(*(p - q)) >= min_dist for q in avoid):
            return p
    return p


def render_clip(
    label: int, seed: int, num_frames: int = NUM_FRAMES, size: int = SIZE, clutter: float = 1.0
) -> np.ndarray:
    """The clip of class `label` for `seed`: (num_frames, size, size, 3) uint8 RGB. Deterministic.

    `clutter` < 1 flattens the background texture and drops distractors (a training curriculum:
    a small transformer learns the actions on plain scenes first); the dataset itself uses 1.
    """
    if not 0 <= label < len(LABELS):
        raise ValueError(f"label must be in [0, {len(LABELS)}), got {label}")
    rng = np.random.default_rng([label, seed])
    T, scale = num_frames, size / SIZE
    t = np.arange(T, dtype=float)
    background = _background(rng, size, scale, clutter)[None]  # (1, H, W, 3): static, drawn once

    # The actor's motion (64-px units). Every class jitters a little, like a hand-held subject.
    half = rng.uniform(*ACTOR_HALF)
    kind = SHAPES[rng.integers(len(SHAPES))]
    angle = np.full(T, rng.uniform(0, np.pi))
    sizes, visible = np.full(T, half), np.ones(T)
    jitter = rng.normal(0, 0.35, (2, T))
    name = LABELS[label]
    if name.startswith("moving"):
        speed = rng.uniform(1.6, 2.4)
        travel = speed * (T - 1)
        along = rng.uniform(6 + half, SIZE - 6 - half - travel) + speed * t
        across = rng.uniform(8 + half, SIZE - 8 - half) + rng.uniform(-0.25, 0.25) * (t - T / 2)
        if name in ("moving left", "moving up"):
            along = SIZE - along
        cx, cy = (along, across) if name in ("moving left", "moving right") else (across, along)
        start = np.array([cx[T // 2], cy[T // 2]])
    else:
        start = rng.uniform(10 + half, SIZE - 10 - half, 2)
        cx, cy = np.full(T, start[0]), np.full(T, start[1])
        if name == "rotating":
            kind = ("triangle", "bar")[rng.integers(2)]  # a rotating square looks alike every 90 degrees
            angle = angle + rng.choice([-1, 1]) * rng.uniform(0.2, 0.35) * t
        elif name in ("growing", "shrinking"):
            ramp = np.linspace(0.45, 1.5, T) if name == "growing" else np.linspace(1.5, 0.45, T)
            sizes = half * ramp
        else:  # blinking: on and off with a period of 4 to 6 frames
            period = rng.integers(4, 7)
            visible = ((t + rng.integers(period)) % period < period / 2).astype(float)
    cx, cy = cx + jitter[0], cy + jitter[1]

    # Static distractors: same shapes and colours as actors, away from the actor's path.
    avoid = [np.array([x, y]) for x, y in zip(cx[::3], cy[::3])] + [start]
    count = rng.integers(2, 4)
    for k in range(count):
        d_half = rng.uniform(3.5, 5.5)
        p = _place(rng, d_half, 2, avoid, d_half + half + 4)
        avoid.append(p)
        kind_d, colour_d, angle_d = SHAPES[rng.integers(len(SHAPES))], _colour(rng), rng.uniform(0, np.pi)
        if k < round(count * clutter):
            _draw(background, kind_d, colour_d, p[0], p[1], d_half, np.full(1, angle_d), np.ones(1), scale)
    frames = np.repeat(background, T, 0)
    _draw(frames, kind, _colour(rng), cx, cy, sizes, angle, visible, scale)

    frames += rng.normal(0, 0.012, frames.shape)  # sensor noise: the only change in static regions
    return (frames.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def clip_seed(split: str, index: int) -> int:
    if split not in SPLIT_BASE:
        raise ValueError(f"split must be one of {', '.join(SPLIT_BASE)}, got {split!r}")
    return SPLIT_BASE[split] + index


def make_dataset(
    n: int, split: str = "test", start: int = 0, num_frames: int = NUM_FRAMES, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Clips start .. start + n - 1 of a split, classes balanced (clip i has class i mod classes).

    -> (clips (n, T, H, W, 3) uint8, labels (n,) int64).
    """
    labels = np.arange(start, start + n) % len(LABELS)
    clips = np.stack([render_clip(int(y), clip_seed(split, start + i), num_frames, size) for i, y in enumerate(labels)])
    return clips, labels.astype(np.int64)
