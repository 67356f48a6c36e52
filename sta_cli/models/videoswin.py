"""Video Swin Transformer (Liu et al., 2022) with STA token pruning, in plain PyTorch.

Architecture as in torchvision's `swin3d_{t,s,b}` and the original release: a (2, 4, 4) Conv3d
patch embedding + LayerNorm, four stages of pre-norm blocks with (shifted) 3D window attention and a
relative position bias, PatchMerging (2x2 spatial neighbours concatenated, LayerNorm, linear 4C -> 2C)
between stages, a final LayerNorm, mean pooling and a linear head. Windows shrink to the grid when
the grid is smaller (no shift along that axis), and grids are zero-padded to whole windows.

STA (paper Sec. 4.1; docs/videoswin.md): at the input of stages 2, 3 and 4 each temporal slice
drops `{r1, 1.5 r1/4, 2 r1/16}` tokens (pruning/swin.py). Inside a pruned stage LayerNorms, qkv, proj
and MLP run on the kept tokens only; window attention runs on the full grid, every dropped position
filled with the qkv of the nearest kept token of its slice, and only kept positions are read back
(eager runs it from the kept positions only: `kept_query_attention`; exported graphs, whose shapes
are static, and FLOP counts, which follow the paper, keep whole windows).
The stage's output grid is filled the same way before PatchMerging, so the next stage starts from a
full grid again; the head pools over the kept tokens of stage 4.

Similarity feature (STAConfig.similarity) at a pruning point, where the new resolution has no
attention yet: "key" / "query" / "value" = that projection of the previous stage's last block
(heads averaged, on its filled grid), averaged over each 2x2 PatchMerging cell; "feature" = the
merged tokens themselves. Neither costs multiply-adds of the network; the affinities of STA's
scoring are cheaper on keys (head_dim wide) than on merged features.

Window attention gathers its input straight into the window layout: zero padding, the cyclic
shift, the window partition and the nearest-kept fill are one index per stage (`window_index`), and
reading the output back at the grid (or kept) positions is another. Windows are grouped by shift
type, so each attention call takes one (heads, vol, vol) mask (bias + that type's shift mask)
instead of a materialised (windows, heads, vol, vol) one. Same numbers as pad + roll + partition
+ mask (torchvision), bit for bit, with a fraction of the memory traffic.

Our state-dict layout is the original release's backbone without its `backbone.` prefix (`layers.{i}.
blocks.{j}...`, `layers.{i}.downsample...`) with `head.*`; `checkpoint_filter_fn` maps torchvision's
and mmaction's layouts into it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes

from ..errors import StaError
from ..pruning import STAConfig, Stage, gather_tokens
from ..pruning.swin import nearest_kept_fill, plan_swin_stages
from .base import ConfigDict
from .layers import Mlp, PrunedClassifier, StaScoring

# The released architectures (torchvision's swin3d_{t,s,b} and the original release): (embed_dim,
# depths) -> name. Their weights come with a 32x224^2 input and ImageNet normalisation.
RELEASED = {
    (96, (2, 2, 6, 2)): "Video Swin-T",
    (96, (2, 2, 18, 2)): "Video Swin-S",
    (128, (2, 2, 18, 2)): "Video Swin-B",
}
RELEASED_INPUT = {"image_size": 224, "num_frames": 32}
# Stage-1 tokens beyond which an input is not real (a 64x448^2 clip has 401,408).
MAX_TOKENS = 1 << 20


@dataclass(frozen=True)
class VideoSwinConfig(ConfigDict):
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: tuple[int, int, int] = (8, 7, 7)
    patch_size: tuple[int, int, int] = (2, 4, 4)
    mlp_ratio: float = 4.0
    num_classes: int = 400
    num_frames: int = 32
    image_size: int = 224
    in_chans: int = 3
    qkv_bias: bool = True
    patch_norm: bool = True
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("depths", "num_heads", "window_size", "patch_size"):  # JSON gives lists
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v
            ):
                raise StaError(f"model config: {name} must be a list of positive integers, got {v!r}")
            object.__setattr__(self, name, tuple(v))
        for name in ("embed_dim", "num_classes", "num_frames", "image_size", "in_chans"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise StaError(f"model config: {name} must be a positive integer, got {v!r}")
        for name in ("mlp_ratio", "norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e3:
                raise StaError(f"model config: {name} must be a positive number, got {v!r}")
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise StaError(f"Video Swin has 4 stages: got depths {self.depths} and heads {self.num_heads}")
        if len(self.window_size) != 3 or len(self.patch_size) != 3:
            raise StaError("window_size and patch_size are (T, H, W) triples")
        for i, heads in enumerate(self.num_heads):
            if self.stage_dim(i) % heads:
                raise StaError(f"stage {i + 1} width {self.stage_dim(i)} is not divisible by {heads} heads")
        t, h, w = self.stage_grids[0]
        if t * h * w > MAX_TOKENS:
            raise StaError(
                f"input {self.num_frames}x{self.image_size}^2 gives {t * h * w:,} tokens at stage 1 "
                f"(more than {MAX_TOKENS:,}): not a real Video Swin input size"
            )

    def stage_dim(self, i: int) -> int:
        return self.embed_dim * 2**i

    @property
    def stage_grids(self) -> list[tuple[int, int, int]]:
        """Token grid (T, H, W) of each stage for a num_frames x image_size^2 clip (padding included)."""
        pt, ph, pw = self.patch_size
        t, h, w = -(-self.num_frames // pt), -(-self.image_size // ph), -(-self.image_size // pw)
        grids = []
        for _ in range(4):
            grids.append((t, h, w))
            h, w = -(-h // 2), -(-w // 2)
        return grids


# --- window attention -----------------------------------------------------------------------------


def window_and_shift(
    grid: tuple[int, ...], window: tuple[int, ...], shifted: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Windows shrink to the grid where it is smaller, and then do not shift (as torchvision and the original)."""
    win = tuple(min(g, w) for g, w in zip(grid, window))
    shift = tuple(0 if (g <= w or not shifted) else w // 2 for g, w in zip(grid, window))
    return win, shift


# Index tables are built with numpy and cached as plain CPU tensors, made outside any tracing,
# fake-tensor or inference mode (so a table first built under tracing or FLOP counting is still a
# real tensor, usable with autograd on). They stay small: the (vol x vol) relative position
# index and the shift masks are built from short vectors in the forward, once per stage, so that
# an exported graph carries a few kB of them instead of a mask constant per block.


def index_table(build):
    """Memoise an index-table builder in a plain dict. torch.compile reads a filled dict's entries as
    constants, where it would trace through functools.lru_cache's wrapper into the numpy code and
    fail on its data-dependent shapes; `compiled.compile_model` fills the tables with one eager call."""
    tables = {}

    @functools.wraps(build)
    def cached(*key):
        if key not in tables:
            with _disable_current_modes(), torch.inference_mode(False):
                tables[key] = _as_tensors(build(*key))
        return tables[key]

    cached.clear = tables.clear
    return cached


def _as_tensors(value):
    """numpy arrays (also inside a tuple or dataclass) as tensors sharing their memory."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, tuple):
        return tuple(_as_tensors(v) for v in value)
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(
            value, **{f.name: _as_tensors(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    return value


@index_table
def position_code(window: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """(vol,) linear code of each window slot's (t, y, x) and the offset such that
    code[i] - code[j] + offset is the row of the (2wt-1)(2wh-1)(2ww-1)-row bias table for slots (i, j)."""
    wt, wh, ww = window
    t, y, x = np.meshgrid(np.arange(wt), np.arange(wh), np.arange(ww), indexing="ij")
    code = (t * (2 * wh - 1) + y) * (2 * ww - 1) + x
    return code.reshape(-1).astype(np.int64), int(((wt - 1) * (2 * wh - 1) + wh - 1) * (2 * ww - 1) + ww - 1)


@dataclass(frozen=True)
class WindowPlan:
    """Where each slot of a (padded, cyclically shifted, partitioned) window layout comes from.

    The references zero-pad the grid to whole windows, roll it by -shift, cut it into windows and add
    a -100 mask between tokens the roll made neighbours. Here the layout is one gather. Windows are
    ordered by their shift type (which axes of the window straddle the roll's wrap-around), raster
    order within a type: all windows of a type share one shift mask, so attention runs per type with
    a (heads, vol, vol) mask instead of a (windows, heads, vol, vol) one.
    """

    src: np.ndarray  # (P,) grid position t*H*W + y*W + x of each slot, or N (= T*H*W) for a padding slot
    dst: np.ndarray  # (N,) slot of each grid position
    counts: tuple[int, ...]  # windows of each type, in layout order
    regions: np.ndarray | None  # (types, vol) region of each slot in a window of that type; None: no shift
    vol: int


@index_table
def window_plan(grid: tuple[int, int, int], win: tuple[int, int, int], shift: tuple[int, int, int]) -> WindowPlan:
    padded = [g + (-g) % w for g, w in zip(grid, win)]
    slot_axes, kinds = [], []
    for size, w, s in zip(padded, win, shift):
        n = size // w
        slot_axes.append((np.arange(size).reshape(n, w) + s) % size)  # rolled by -s: slot i holds (i + s) % size
        kinds.append((np.arange(n) == n - 1) & (s > 0))  # the last window straddles the wrap-around
    (t, y, x), (T, H, W) = slot_axes, grid
    # Slot order: (window t, window y, window x, offset t, offset y, offset x).
    tt, yy, xx = t[:, None, None, :, None, None], y[None, :, None, None, :, None], x[None, None, :, None, None, :]
    src = np.where((tt < T) & (yy < H) & (xx < W), (tt * H + yy) * W + xx, T * H * W)
    kind = (kinds[0][:, None, None] * 4 + kinds[1][None, :, None] * 2 + kinds[2][None, None, :]).reshape(-1)
    order = np.argsort(kind, kind="stable")
    src = src.reshape(len(kind), -1)[order].reshape(-1).astype(np.int64)
    dst = np.empty(T * H * W, dtype=np.int64)
    slots = np.nonzero(src < T * H * W)[0]
    dst[src[slots]] = slots
    types, counts = np.unique(kind, return_counts=True)
    regions = None
    if any(shift):
        # Along a straddling axis the slots before w - s come from the grid's end, the rest from its start.
        per_axis = [np.where(np.arange(w) < w - s, 1, 2) for w, s in zip(win, shift)]
        regions = np.stack(
            [
                (
                    np.where(k & 4, per_axis[0], 0)[:, None, None] * 9
                    + np.where(k & 2, per_axis[1], 0)[None, :, None] * 3
                    + np.where(k & 1, per_axis[2], 0)[None, None, :]
                ).reshape(-1)
                for k in types
            ]
        )
    return WindowPlan(src, dst, tuple(int(c) for c in counts), regions, win[0] * win[1] * win[2])


# Eager runs token-wise work and window gathers in pieces of about this many rows (see SwinBlock).
CHUNK_ROWS = 4096
# Eager attends from kept positions only when that skips at least this many multiply-adds per
# window: each window then costs two gathers and an SDPA call of its own (~0.1 ms on 2 CPU cores).
# Swin-T at r1 >= 192 skips 14M+ per window and gains 5-13%; a 16-wide toy model skips 0.3M and
# would lose ~10%.
KEPT_QUERY_MIN_MACS = 8_000_000


def tracing() -> bool:
    """Under torch.export / ONNX export or a TorchScript trace: one op per step keeps the graph small."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def constant(table: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return table.to(like.device, dtype or like.dtype)


@dataclass
class WindowIndex:
    """One window layout of a stage for the tokens at hand, built once per stage and forward.

    Rows are those of the block's qkv flattened to (B * K1, 3C), K1 = K (+ 1 padding row per sample
    when the layout has padding slots). The layout holds windows outer, samples inner, so that the
    windows of one type are a contiguous (windows * B) batch for attention at any batch size.
    """

    rows: torch.Tensor  # (nW * B * vol,) qkv row of each slot
    back: torch.Tensor  # (B * K,) row of the attention output for each token
    counts: tuple[int, ...]  # windows per shift type
    rel: torch.Tensor  # (vol, vol) row of the relative position bias table
    regions: torch.Tensor | None  # (types, vol, vol) shift masks (-100 across regions), None: no shift
    padded: bool  # padding slots exist: the qkv rows carry one padding row per sample
    # Eager, pruned stage: attention runs from the kept positions only, the output holds one row per
    # kept token in layout order. query_slots (B * K,): each one's slot in its window; query_counts:
    # kept tokens per (window, sample) pair in layout order. None: the output holds every slot.
    query_slots: torch.Tensor | None = None
    query_counts: list[int] | None = None


def relative_index(window: tuple[int, int, int], vol: int, like: torch.Tensor) -> torch.Tensor:
    """(vol, vol) rows of the bias table, truncated to the first vol slots as the references do when
    windows shrink. Built from a (vol,) vector: exporters fold it into one constant per call, so the
    model computes it once per window volume and forward (`rel_cache` of `window_index`)."""
    code, offset = position_code(tuple(window))
    code = constant(code[:vol], like, torch.long)
    return code[:, None] - code[None, :] + offset


def window_index(
    grid, window, shifted: bool, x: torch.Tensor, kept=None, fill=None, rel_cache: dict | None = None
) -> WindowIndex:
    """x (B, K, C): the stage's tokens, all T*H*W of them, or the kept ones with kept (B, K) their grid
    positions and fill (B, T*H*W) the token that fills each grid position. rel_cache: {vol: relative
    index} shared by the calls of one forward."""
    B, K = x.shape[:2]
    win, shift = window_and_shift(grid, window, shifted)
    plan = window_plan(tuple(grid), win, shift)
    src, dst = constant(plan.src, x, torch.long), constant(plan.dst, x, torch.long)
    padded = len(plan.src) > len(plan.dst)
    if fill is None:  # every position holds its own token; padding slots read row N = K
        token = src.expand(B, -1)
        slot = dst.expand(B, -1)
    else:  # dropped positions read their nearest kept token, padding slots row K
        token = (torch.cat([fill, fill.new_full((B, 1), K)], 1) if padded else fill)[:, src]
        slot = dst[kept]
    # Sample offsets without arange(B): a cumsum keeps every shape static for ONNX shape inference.
    sample = torch.ones_like(token[:, :1]).cumsum(0) - 1  # (B, 1)
    vol = plan.vol
    rows = (token + sample * (K + int(padded))).view(B, -1, vol).transpose(0, 1).reshape(-1)
    back = ((slot // vol * B + sample) * vol + slot % vol).reshape(-1)
    query_slots = query_counts = None
    pairs = len(plan.src) // vol * B  # (window, sample) pairs
    skipped = (pairs * vol - B * K) * vol * x.shape[-1] * 2  # multiply-adds of the unread query rows
    if kept is not None and not tracing() and x.device.type == "cpu" and skipped >= pairs * KEPT_QUERY_MIN_MACS:
        # Only kept positions are read back, so eager attends from those alone: the fill's copies
        # are keys and values, never queries. Exported graphs keep whole windows (static shapes),
        # and so does FLOP counting (on the meta device): the paper counts whole windows. GPUs too:
        # a host sync per stage and a launch per window, not measured there.
        order = back.argsort()  # kept tokens in layout order
        layout = back[order]
        query_slots = layout % vol
        query_counts = torch.bincount(layout // vol, minlength=pairs).tolist()
        back = order.argsort()
    rel_cache = {} if rel_cache is None else rel_cache
    if vol not in rel_cache:
        rel_cache[vol] = relative_index(window, vol, x)
    regions = None
    if plan.regions is not None:
        ids = constant(plan.regions, x, torch.long)
        regions = torch.where(ids[:, :, None] != ids[:, None, :], -100.0, 0.0).to(x.dtype)
    return WindowIndex(rows, back, plan.counts, rel_cache[vol], regions, padded, query_slots, query_counts)


def kept_query_attention(q, k, v, mask, slots: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Window attention from each window's kept positions only, one SDPA per (window, sample) pair.

    q, k, v (n, heads, vol, hd) for n pairs, mask (1, heads, vol, vol), slots (sum(counts),) each
    kept position's slot in its window, pair by pair -> per pair with kept tokens, (count, heads * hd).
    The same sums as whole-window attention read back at those rows, up to float rounding: the
    fused kernel blocks queries by their count.
    """
    outs = []
    for j, part in enumerate(slots.split(counts)):
        if len(part):
            out = F.scaled_dot_product_attention(
                q[j : j + 1].index_select(2, part), k[j : j + 1], v[j : j + 1], attn_mask=mask.index_select(2, part)
            )  # (1, heads, count, hd)
            outs.append(out[0].transpose(0, 1).reshape(len(part), -1))
    return outs


class WindowAttention3d(nn.Module):
    """Multi-head self-attention in 3D windows with a relative position bias.

    Split in two so that STA can run the projections on kept tokens only: `qkv` / `proj` are
    per-token linears, `attend` is the windowed attention on the full (filled) grid of qkv.
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int, int], qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def attend(self, qkv: torch.Tensor, index: WindowIndex) -> torch.Tensor:
        """Window attention on the full grid. qkv (B, K, 3C) of the tokens `index` was built for
        -> output before proj, (B, K, C). Padding slots hold the qkv bias, as in the references
        (they pad before the qkv linear)."""
        B, K, C3 = qkv.shape
        C, heads = C3 // 3, self.num_heads
        if index.padded:
            pad_row = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(C3)
            qkv = torch.cat([qkv, pad_row.to(qkv.dtype).expand(B, 1, C3)], 1)
        vol, hd = index.rel.shape[0], C // heads
        # A contiguous (heads, vol, vol) bias, which SDPA's fused kernel takes as is (a strided one is
        # copied on every call): rows of the transposed table gathered by index_select, 3-5x faster
        # than advanced indexing (3.0 -> 0.6 ms per Swin-T stage-3 block), the same values.
        table = self.relative_position_bias_table.t().contiguous()  # (heads, table rows), a few kB
        bias = table.index_select(1, index.rel.flatten()).view(heads, vol, vol)
        if torch.onnx.is_in_onnx_export():
            return self.attend_heads_outer(qkv, index, bias).view(B, K, C)
        rows = qkv.reshape(-1, C3)
        outs, start, queries = [], 0, 0
        for i, n in enumerate(index.counts):  # one attention per shift type: its mask is shared
            mask = (bias if index.regions is None else bias + index.regions[i])[None]
            step = n if tracing() else max(1, CHUNK_ROWS // (B * vol))  # eager: gather a few windows at a time
            for w in range(start, start + n, step):
                w_end = min(w + step, start + n)
                slots = index.rows.view(-1, B * vol)[w:w_end].reshape(-1)  # constant bounds: static shapes in ONNX
                windows = rows.index_select(0, slots)  # (n * B * vol, 3C)
                q, k, v = (
                    windows.view(-1, vol, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
                )  # (n * B, heads, vol, hd)
                if index.query_counts is not None:  # eager, pruned stage: kept rows only
                    counts = index.query_counts[w * B : w_end * B]
                    end = queries + sum(counts)
                    outs += kept_query_attention(q, k, v, mask, index.query_slots[queries:end], counts)
                    queries = end
                    continue
                # 4-D SDPA takes PyTorch's fused CPU kernel: several times faster than matmul + softmax here.
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)  # (n * B, vol, heads, hd)
                if torch.compiler.is_compiling():
                    # A reshape is traced as a view or a copy by SDPA's output strides (the fused CPU kernel's
                    # vol-major layout vs the math kernel's heads-major one), and the ONNX exporter re-runs the
                    # graph after decomposing SDPA into the other layout: "Cannot view a tensor ...". An
                    # explicit copy holds for both. Eager keeps the free view the fused kernel allows.
                    out = out.clone(memory_format=torch.contiguous_format)
                outs.append(out.reshape(-1, C))
            start += n
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (nW * B * vol or B * K, C)
        return out.index_select(0, index.back).view(B, K, C)

    def attend_heads_outer(self, qkv: torch.Tensor, index: WindowIndex, bias: torch.Tensor) -> torch.Tensor:
        """`attend` for ONNX graphs: heads outermost, so that the layout changes run on the rows the
        block has (the kept tokens) and never on the filled windows. qkv (B, K1, 3C), bias
        (heads, vol, vol) -> (B * K, C).

        qkv is split into heads before the window gather and the output gathered back before heads
        are merged again; q·kᵀ is written out (scale on q, as the references do) so that ONNX
        Runtime folds the transpose of k and the scale into one MatMul. The same dot products as
        `attend`'s SDPA, up to float rounding.
        """
        heads, vol = self.num_heads, bias.shape[-1]
        hd = qkv.shape[-1] // 3 // heads
        q, k, v = qkv.reshape(-1, 3, heads, hd).permute(1, 2, 0, 3).unbind(0)  # each (heads, B * K1, hd)
        q = q * hd**-0.5
        B = qkv.shape[0]
        outs, start = [], 0
        for i, n in enumerate(index.counts):  # one attention per shift type: its mask is shared
            mask = (bias if index.regions is None else bias + index.regions[i])[:, None]  # (heads, 1, vol, vol)
            slots = index.rows.view(-1, B * vol)[start : start + n].reshape(-1)
            qw, kw, vw = (t.index_select(1, slots).view(heads, -1, vol, hd) for t in (q, k, v))
            attn = (qw @ kw.transpose(-1, -2) + mask).softmax(-1)  # (heads, n * B, vol, vol)
            outs.append((attn @ vw).flatten(1, 2))  # (heads, n * B * vol, hd)
            start += n
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        return out.index_select(1, index.back).transpose(0, 1).reshape(-1, heads * hd)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, cfg: VideoSwinConfig, shifted: bool):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = WindowAttention3d(dim, num_heads, cfg.window_size, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor, index: WindowIndex):
        """x (B, K, C): the stage's tokens (all of them, or the kept ones), index: their window layout
        for this block's shift (`window_index`). Returns the new tokens and their qkv (B, K, 3C)."""
        qkv = self.attn.qkv(self.norm1(x))  # kept tokens only
        x = x + self.attn.proj(self.attn.attend(qkv, index))
        if tracing() or x.shape[0] * x.shape[1] <= 2 * CHUNK_ROWS:
            return x + self.mlp(self.norm2(x)), qkv
        # Eager, many tokens: the MLP a few thousand tokens at a time. Same numbers; the (tokens, 4C)
        # hidden layer of a whole stage-1 grid is tens of MB, and allocating that afresh costs more
        # in page faults than the MLP's arithmetic on CPU.
        chunks = x.reshape(-1, x.shape[-1]).split(CHUNK_ROWS)
        if torch.is_grad_enabled():  # autograd needs each chunk as it was: a new tensor
            return torch.cat([c + self.mlp(self.norm2(c)) for c in chunks]).view(x.shape), qkv
        for c in chunks:  # x is this block's own tensor: the residual is added in place, no copy
            c.add_(self.mlp(self.norm2(c)))
        return x, qkv


class PatchMerging(nn.Module):
    """2x2 spatial neighbours -> one token: concat (x00, x10, x01, x11) -> LayerNorm(4C) -> Linear(4C, 2C)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H, W, C) -> (B, T, H/2, W/2, 2C)
        H, W = x.shape[2:4]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class PatchEmbed3d(nn.Module):
    def __init__(self, cfg: VideoSwinConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B, T', H', W', D)
        pad = [(-s) % p for s, p in zip(x.shape[2:], self.patch_size)]
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class SwinStage(nn.Module):
    def __init__(self, i: int, cfg: VideoSwinConfig):
        super().__init__()
        dim = cfg.stage_dim(i)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, cfg.num_heads[i], cfg, shifted=j % 2 == 1) for j in range(cfg.depths[i])
        )
        self.downsample = PatchMerging(dim, cfg.norm_eps) if i < 3 else None


def merge_cells(t: torch.Tensor) -> torch.Tensor:
    """Average each 2x2 PatchMerging cell: (B, T, H, W, c) -> (B, T, ceil(H/2), ceil(W/2), c).

    Zero padding (odd H or W) only rescales a cell's mean, which cosine similarity ignores.
    """
    B, T, H, W, c = t.shape
    t = F.pad(t, (0, 0, 0, W % 2, 0, H % 2))
    return t.view(B, T, (H + 1) // 2, 2, (W + 1) // 2, 2, c).mean((3, 5))


class VideoSwin(PrunedClassifier):
    """Video Swin classifier; `sta` (an STAConfig) turns on pruning, r1 = 0 is the plain model.

    forward(pixel_values (B, C, T, H, W)) -> logits (B, classes); afterwards `kept_positions` holds,
    per STA step (input of stages 2, 3, 4), the kept positions (B, tokens) in that stage's full grid,
    indexed t*H*W + y*W + x, ascending.
    """

    def __init__(self, cfg: VideoSwinConfig, sta: STAConfig | None = None):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed3d(cfg)
        self.layers = nn.ModuleList(SwinStage(i, cfg) for i in range(4))
        self.norm = nn.LayerNorm(cfg.stage_dim(3), eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.stage_dim(3), cfg.num_classes)
        self.sta_scoring = StaScoring()
        self.kept_positions: list[torch.Tensor] = []
        self.set_sta(sta or STAConfig())

    def plan_stages(self, sta: STAConfig) -> list[Stage]:
        """STA's steps for this model's stage grids (StaError when the settings do not fit them)."""
        return plan_swin_stages(sta, self.cfg.stage_grids[1:])

    @property
    def pruning_grid(self) -> tuple[int, int, int]:
        return tuple(self.cfg.stage_grids[1])  # stage 1 is never pruned

    @property
    def kept_grids(self) -> list[tuple[int, int, int]]:
        return [tuple(self.cfg.stage_grids[s.block]) for s in self.stages]

    @property
    def tokens_per_stage(self) -> list[int]:
        """Tokens each of the 4 stages runs its linear layers on (stage 1 is never pruned)."""
        counts = [t * h * w for t, h, w in self.cfg.stage_grids]
        for s in self.stages:
            counts[s.block] = s.tokens_out
        return counts

    def _similarity(
        self, merged: torch.Tensor, prev_qkv: torch.Tensor, prev_fill, prev_grid, heads: int
    ) -> torch.Tensor:
        """The feature STA compares tokens with at a stage input (see the module docstring). -> (B, N, c).

        prev_qkv (B, K, 3C): qkv of the previous stage's last block, on its kept tokens, which
        prev_fill (or None: all tokens present) spreads over its grid.
        """
        if self.sta.similarity == "feature":
            return merged.flatten(1, 3)
        part = ("query", "key", "value").index(self.sta.similarity)
        proj = prev_qkv.unflatten(-1, (3, heads, -1))[..., part, :, :].mean(-2)  # (B, K, head_dim)
        if prev_fill is not None:
            proj = gather_tokens(proj, prev_fill)
        return merge_cells(proj.view(proj.shape[0], *prev_grid, -1)).flatten(1, 3)

    def forward_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pooled features (B, D) and, per STA step, the kept grid positions (B, tokens)."""
        x = self.patch_embed(pixel_values)  # (B, T, H, W, C)
        B = x.shape[0]
        kept_all, prev_qkv, prev_fill, prev_grid, rel_cache = [], None, None, None, {}
        for i, layer in enumerate(self.layers):
            # Python ints: the grid keys the cached index tables (a tracer would hand out 0-d tensors).
            grid = tuple(int(n) for n in x.shape[1:4])
            tokens = x.flatten(1, 3)
            kept = fill = None
            s = self._stage_at.get(i)
            if s is not None:
                step = self.stages[s]
                if step.tokens_in != tokens.shape[1]:
                    raise StaError(
                        f"STA was planned for {self.cfg.num_frames}x{self.cfg.image_size}^2 clips; this input gives a "
                        f"{'x'.join(map(str, grid))} grid at stage {i + 1}"
                    )
                metric = functools.partial(
                    self._similarity, x, prev_qkv, prev_fill, prev_grid, self.cfg.num_heads[i - 1]
                )
                positions = torch.arange(tokens.shape[1], device=x.device).expand(B, -1)
                kept = (
                    self.sta_scoring(metric, tokens, positions, step, self.sta, s, grid[1:])
                    .sort(dim=-1, stable=True)
                    .values
                )
                fill = nearest_kept_fill(kept, grid)
                tokens = gather_tokens(tokens, kept)
                kept_all.append(kept)
            # Window layouts (plain, shifted) of this stage, shared by its blocks.
            index = {
                shifted: window_index(grid, self.cfg.window_size, shifted, tokens, kept, fill, rel_cache)
                for shifted in {b.shifted for b in layer.blocks}
            }
            for blk in layer.blocks:
                tokens, prev_qkv = blk(tokens, index[blk.shifted])
            prev_grid, prev_fill = grid, fill
            if layer.downsample is not None:
                full = tokens if fill is None else gather_tokens(tokens, fill)  # PatchMerging sees a filled grid
                x = layer.downsample(full.view(B, *grid, -1))
        pooled = self.norm(tokens).mean(1)  # over stage 4's kept tokens
        return pooled, kept_all


# --- checkpoint layouts -------------------------------------------------------------------------

_TV_BLOCK = re.compile(r"^features\.(\d+)\.(\d+)\.(.+)$")
_TV_MERGE = re.compile(r"^features\.(\d+)\.(reduction|norm)\.(.+)$")
_TV_MLP = {"mlp.0.": "mlp.fc1.", "mlp.3.": "mlp.fc2."}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision `swin3d_*`, original release (mmaction 0.x) or mmaction2 1.x Video Swin state dict
    into our layout.

    Drops the `relative_position_index` buffers (recomputed from the window size). Keys this function
    does not recognise are left as they are, so the strict load that follows names them.
    """
    out = {}
    for key, t in state_dict.items():
        if key.endswith("relative_position_index"):
            continue
        new = key
        if key.startswith("backbone.norm3."):  # mmaction2 1.x names the final norm after stage index 3
            new = "norm." + key[len("backbone.norm3.") :]
        elif key.startswith("backbone."):  # mmaction: backbone.* + cls_head.fc_cls
            new = key[len("backbone.") :]
        elif key.startswith("cls_head.fc_cls."):
            new = "head." + key[len("cls_head.fc_cls.") :]
        elif m := _TV_MERGE.match(key):  # torchvision: features.{1,3,5} are the PatchMergings
            if int(m.group(1)) % 2 == 1:
                new = f"layers.{int(m.group(1)) // 2}.downsample.{m.group(2)}.{m.group(3)}"
        if m := _TV_BLOCK.match(key):  # torchvision: features.{0,2,4,6}.{j} are the blocks
            rest = m.group(3)
            for src, dst in _TV_MLP.items():
                if rest.startswith(src):
                    rest = dst + rest[len(src) :]
            new = f"layers.{int(m.group(1)) // 2}.blocks.{m.group(2)}.{rest}"
        out[new] = t
    return out


# The windows of the released checkpoints (Kinetics; Something-Something v2).
RELEASED_WINDOWS = ((8, 7, 7), (16, 7, 7))


def table_windows(rows: int, index: torch.Tensor | None = None) -> list[tuple[int, int, int]]:
    """Every window (wt, wh, ww) whose bias table has `rows` rows ((2wt-1)(2wh-1)(2ww-1)) and, when
    the checkpoint carries its `relative_position_index` buffer, whose index table is that buffer."""
    fits = sorted(
        ((a + 1) // 2, (b + 1) // 2, (rows // a // b + 1) // 2)
        for a in range(1, rows + 1, 2)
        if rows % a == 0
        for b in range(1, rows // a + 1, 2)
        if (rows // a) % b == 0 and (rows // a // b) % 2 == 1
    )
    fits.sort(key=lambda w: w[1] != w[2])  # square-sided windows first, as every released one is
    if index is None:
        return fits
    return [w for w in fits if index.numel() == math.prod(w) ** 2 and _index_is(w, index)]


def _index_is(window: tuple[int, int, int], index: torch.Tensor) -> bool:
    code, offset = position_code(window)  # the references' index: code[i] - code[j] + offset
    return torch.equal(index.reshape(len(code), len(code)).long(), code[:, None] - code[None, :] + offset)


def window_from_table(
    rows: int, index: torch.Tensor | None = None, stated: tuple[int, int, int] | None = None
) -> tuple[int, int, int]:
    """The attention window of a bias table with `rows` rows.

    A `relative_position_index` buffer (torchvision and the original release save one per block)
    fixes it, up to where a side of 1 sits. A config's `stated` window must be one of those the
    table fits. Without buffer or config the table must fit one window only, or one released window
    (8x7x7, 16x7x7): 2535 rows also fit 7x8x7 or 1x20x33, which no one trains. Several fits (225
    rows: 1x8x8, 5x3x3, 13x2x2, ...) are an error rather than a guess: a wrong window runs, with
    wrong logits.
    """
    fits = table_windows(rows, index)
    source = f"a {rows}-row bias table" + (" and its relative_position_index" if index is not None else "")
    fit = "fit" if index is not None else "fits"
    if stated is not None:
        if tuple(stated) in fits:
            return tuple(stated)
        raise StaError(f"the config says window_size {list(stated)}, but {source} {fit} {_windows(fits)}")
    if len(fits) == 1:
        return fits[0]
    # A buffer leaves only windows that differ in where a side of 1 sits (1x8x8, 8x1x8 and 8x8x1 share
    # one index): the square-sided one, as every released window is. Without it, a released window.
    likely = [w for w in fits if (w[1] == w[2] if index is not None else w in RELEASED_WINDOWS)]
    if len(likely) == 1:
        return likely[0]
    if not fits:
        raise StaError(f"{source} {fit} no attention window")
    unsaid = (
        ""
        if index is not None
        else " (it has no relative_position_index buffer, which torchvision and the original release save)"
    )
    raise StaError(
        f"{source} {fit} the attention windows {_windows(fits)}, and the checkpoint does not say which{unsaid}"
    )


def _windows(fits: list[tuple[int, int, int]]) -> str:
    names = ["x".join(map(str, w)) for w in fits[:6]]
    return (", ".join(names) + (f" and {len(fits) - 6} more" if len(fits) > 6 else "")) or "no window"


def index_buffer(state_dict: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """A block's `relative_position_index` buffer, if the checkpoint carries them (they all agree)."""
    return next((t for key, t in state_dict.items() if key.endswith("relative_position_index")), None)


def shapes_from_state_dict(
    sd: dict[str, torch.Tensor], index: torch.Tensor | None = None, stated_window: tuple | None = None
) -> dict:
    """What the weights (our layout) fix: everything but the input size (frames, pixels)."""
    try:
        w = sd["patch_embed.proj.weight"]  # (D, C, pt, ph, pw)
        depths = tuple(
            1 + max((int(m.group(1)) for k in sd if (m := re.match(rf"^layers\.{i}\.blocks\.(\d+)\.", k))), default=-1)
            for i in range(4)
        )
        if 0 in depths:
            if depths.index(0) > 0:
                raise StaError(f"a {depths.index(0)}-stage Video Swin: sta implements the 4-stage architecture")
            raise KeyError("layers.0.blocks.0.*")
        heads = tuple(sd[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in range(4))
        rows = sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
        mlp_ratio = sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / w.shape[0]
        num_classes = sd["head.weight"].shape[0]
    except KeyError as e:
        raise StaError(f"not a Video Swin classifier checkpoint: cannot find {e} in its weights") from None
    except IndexError:
        raise StaError("not a Video Swin classifier checkpoint: a weight it needs is a scalar") from None
    return dict(
        embed_dim=w.shape[0],
        depths=depths,
        num_heads=heads,
        window_size=window_from_table(rows, index, stated_window),
        patch_size=tuple(w.shape[2:]),
        mlp_ratio=mlp_ratio,
        num_classes=num_classes,
        in_chans=w.shape[1],
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in sd,
        patch_norm="patch_embed.norm.weight" in sd,
    )


def released(shapes: dict) -> str | None:
    """Name of the released architecture these weights have, if any."""
    standard = shapes["patch_size"] == (2, 4, 4) and shapes["mlp_ratio"] == 4 and shapes["in_chans"] == 3
    standard = standard and shapes["patch_norm"] and shapes["qkv_bias"]
    heads = tuple(shapes["embed_dim"] // 32 * 2**i for i in range(4))  # 32 channels per head
    return RELEASED.get((shapes["embed_dim"], shapes["depths"])) if standard and shapes["num_heads"] == heads else None
