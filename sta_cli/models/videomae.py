"""VideoMAE ViT (Tong et al., 2022) with STA token pruning, in plain PyTorch.

Tokens: a Conv3d tubelet embedding gives n_t x n_s tokens (time-major), plus a fixed sinusoidal
position table; pre-norm blocks; mean pooling, fc_norm and a linear classifier. STA runs after the
blocks its plan names (pruning/config.py) and the rest of the network sees only the kept tokens.

`checkpoint_filter_fn` maps the Hugging Face, original VideoMAE / VideoMAE V2 (`modeling_finetune.py`:
fused qkv weight, q and v biases, the key bias zero; optional layer-scale gammas) and mmaction2 1.x
(`vit_mae.py`) key layouts into ours. VideoMAE V2 is the same network: ViT-g differs only in size
(patch 14, 1408 wide, 40 blocks, 16 heads, MLP 6144 = 48/11 x 1408).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import StaError
from ..pruning import STAConfig, Stage, gather_tokens, similarity_feature
from ..pruning import plan_stages as plan_vit_stages
from .base import ConfigDict
from .layers import Mlp, PrunedClassifier, StaScoring

# The released architectures: (embed_dim, depth, patch_size) -> (name, heads). Their weights come
# with a 16x224^2 input and ImageNet normalisation; heads are not in the weights.
RELEASED = {
    (384, 12, 16): ("VideoMAE ViT-S", 6),
    (768, 12, 16): ("VideoMAE ViT-B", 12),
    (1024, 24, 16): ("VideoMAE ViT-L", 16),
    (1280, 32, 16): ("VideoMAE ViT-H", 16),
    (1408, 40, 14): ("VideoMAE V2 ViT-g", 16),
}
RELEASED_INPUT = {"image_size": 224, "num_frames": 16}
# A VideoMAE with more tokens than this is not a real input (a 32x448^2 clip has 12,544); the
# position table alone would take tokens x width x 4 bytes.
MAX_TOKENS = 1 << 16

_INT_FIELDS = (
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_dim",
    "num_classes",
    "image_size",
    "patch_size",
    "num_frames",
    "tubelet_size",
    "in_chans",
)


@dataclass(frozen=True)
class VideoMAEConfig(ConfigDict):
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 400
    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    qkv_bias: bool = True
    use_mean_pooling: bool = True
    norm_eps: float = 1e-6  # blocks (original 1e-6, Hugging Face 1e-12)
    fc_norm_eps: float = 1e-6  # fc_norm (original 1e-6, Hugging Face 1e-5)
    layer_scale: bool = False  # per-channel gamma_1 / gamma_2 on the residual branches (init_values > 0)

    def __post_init__(self):
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise StaError(f"model config: {name} must be a positive integer, got {v!r}")
        for name in ("qkv_bias", "use_mean_pooling", "layer_scale"):
            if not isinstance(getattr(self, name), bool):
                raise StaError(f"model config: {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("norm_eps", "fc_norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise StaError(f"model config: {name} must be a small positive number, got {v!r}")
        if self.embed_dim % self.num_heads:
            raise StaError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size or self.num_frames % self.tubelet_size:
            raise StaError(
                f"input {self.num_frames}x{self.image_size}^2 is not a whole number of "
                f"{self.tubelet_size}x{self.patch_size}^2 tubelets"
            )
        if self.num_tokens > MAX_TOKENS:
            raise StaError(
                f"input {self.num_frames}x{self.image_size}^2 gives {self.num_tokens:,} tokens per clip "
                f"(more than {MAX_TOKENS:,}): not a real VideoMAE input size"
            )

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (n_t, h, w)."""
        side = self.image_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def num_tokens(self) -> int:
        n_t, h, w = self.grid
        return n_t * h * w

    @classmethod
    def from_hf(cls, hf: dict) -> VideoMAEConfig:
        """From a transformers `VideoMAEConfig` dict (either bias spelling: qkv_bias, or newer qv_bias).

        The head count is taken as the config says; `models.build` corrects the checkpoints whose
        config is known to be wrong (CONVERTED_6_HEAD_SMALL).
        """
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "num_labels",
            "image_size",
            "patch_size",
            "num_frames",
            "tubelet_size",
            "num_channels",
        ):
            v = hf.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise StaError(f"config.json: {key} must be a positive integer, got {v!r}")
        if hf.get("hidden_act", "gelu") != "gelu":  # sta's blocks run exact GELU, as VideoMAE does
            raise StaError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (VideoMAE uses 'gelu')")
        embed = hf.get("hidden_size", 768)
        labels = hf.get("id2label") or {}
        return cls(
            embed_dim=embed,
            depth=hf.get("num_hidden_layers", 12),
            num_heads=hf.get("num_attention_heads", 12),
            mlp_dim=hf.get("intermediate_size", 4 * embed if isinstance(embed, int) else embed),
            num_classes=len(labels) if isinstance(labels, dict) and labels else hf.get("num_labels", 400),
            image_size=hf.get("image_size", 224),
            patch_size=hf.get("patch_size", 16),
            num_frames=hf.get("num_frames", 16),
            tubelet_size=hf.get("tubelet_size", 2),
            in_chans=hf.get("num_channels", 3),
            qkv_bias=hf.get("qv_bias", hf.get("qkv_bias", True)),
            use_mean_pooling=hf.get("use_mean_pooling", True),
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            fc_norm_eps=1e-5,  # transformers builds fc_norm with nn.LayerNorm's default
        )


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """The fixed sin-cos position table of VideoMAE (computed in float64 as the original does). -> (1, n, dim)."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    expo = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angle = pos / torch.pow(10000.0, expo)
    table = torch.where(torch.arange(dim) % 2 == 0, angle.sin(), angle.cos())
    return table.to(torch.float32)[None]


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, (cfg.tubelet_size, p, p), (cfg.tubelet_size, p, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B, N, D), time-major
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; also returns q, k, v for STA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(B, N, D)), (q, k, v)


class Block(nn.Module):
    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_dim)
        if cfg.layer_scale:  # VideoMAE V2 / mmaction2 with init_values > 0
            self.gamma_1 = nn.Parameter(torch.ones(cfg.embed_dim))
            self.gamma_2 = nn.Parameter(torch.ones(cfg.embed_dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor):
        y, qkv = self.attn(self.norm1(x))
        if self.gamma_1 is None:
            x = x + y
            return x + self.mlp(self.norm2(x)), qkv
        x = x + self.gamma_1 * y
        return x + self.gamma_2 * self.mlp(self.norm2(x)), qkv


class VideoMAE(PrunedClassifier):
    """VideoMAE classifier; `sta` (an STAConfig) turns on pruning, r1 = 0 is the plain model.

    forward(pixel_values (B, C, T, H, W)) -> logits (B, classes); afterwards `kept_positions` holds,
    per STA stage, the original token indices (B, tokens) that stage kept.
    """

    def __init__(self, cfg: VideoMAEConfig, sta: STAConfig | None = None):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.register_buffer("pos_embed", sinusoid_table(cfg.num_tokens, cfg.embed_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.Identity() if cfg.use_mean_pooling else nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.fc_norm_eps) if cfg.use_mean_pooling else nn.Identity()
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.sta_scoring = StaScoring()
        self.kept_positions: list[torch.Tensor] = []
        self.set_sta(sta or STAConfig())

    def plan_stages(self, sta: STAConfig) -> list[Stage]:
        """STA's stages for this model's token grid (StaError when the settings do not fit it)."""
        n_t, h, w = self.cfg.grid
        stages = plan_vit_stages(sta, self.cfg.depth, n_t, h * w)
        if any(s.drop for s in stages) and not self.cfg.use_mean_pooling:
            # transformers and the original code classify from x[:, 0], the first patch token (there is
            # no CLS token); STA may drop or move it, so the head would read another token.
            raise StaError(
                "this VideoMAE classifies from its first patch token (use_mean_pooling false), which STA "
                "may drop: sta prunes mean-pooled models only (r1 = 0 runs it unpruned)"
            )
        return stages

    @property
    def pruning_grid(self) -> tuple[int, int, int]:
        return tuple(self.cfg.grid)

    @property
    def kept_grids(self) -> list[tuple[int, int, int]]:
        return [tuple(self.cfg.grid)] * len(self.stages)

    @property
    def tokens_per_stage(self) -> list[int]:
        """Token count entering the network, then after each STA stage."""
        return [self.cfg.num_tokens] + [s.tokens_out for s in self.stages]

    def forward_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pooled features (B, D) and, per STA stage, the kept original token indices (B, tokens)."""
        # Table first: the sum takes its (token-major) layout. The conv output, transposed, is
        # channel-major, and as the first operand it would make the whole residual stream strided
        # (every LayerNorm copying, every residual add strided): ~10% of ViT-B's time.
        x = self.pos_embed.to(pixel_values.dtype) + self.patch_embed(pixel_values)
        B, N, _ = x.shape
        positions = torch.arange(N, device=x.device).expand(B, N)
        kept = []
        for i, blk in enumerate(self.blocks):
            x, qkv = blk(x)
            s = self._stage_at.get(i)
            if s is not None:
                metric = functools.partial(similarity_feature, self.sta.similarity, x, qkv)
                idx = self.sta_scoring(metric, x, positions, self.stages[s], self.sta, s, self.cfg.grid[1:])
                x, positions = gather_tokens(x, idx), gather_tokens(positions, idx)
                kept.append(positions)
        x = self.norm(x)
        pooled = self.fc_norm(x.mean(1)) if self.cfg.use_mean_pooling else x[:, 0]
        return pooled, kept


# --- checkpoint layouts -------------------------------------------------------------------------

_HF_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_TOP = {
    "videomae.embeddings.patch_embeddings.projection": "patch_embed.proj",
    "videomae.layernorm": "norm",
    "fc_norm": "fc_norm",
    "classifier": "head",
}
_QKV_PARTS = re.compile(r"^blocks\.(\d+)\.attn\.(q|k|v)_(weight|bias)$")


def _fuse_qkv(sd: dict[str, torch.Tensor], consumed: set[str]) -> dict[str, torch.Tensor]:
    """blocks.i.attn.{q,k,v}_{weight,bias} staging keys -> blocks.i.attn.qkv.{weight,bias}; missing k bias = 0."""
    out = {}
    layers = sorted({int(m.group(1)) for k in sd if (m := _QKV_PARTS.match(k))})
    for i in layers:
        pre = f"blocks.{i}.attn."
        w = [sd.get(pre + f"{p}_weight") for p in "qkv"]
        fused = sd.get(pre + "qkv.weight")  # already fused (original layout): kept as it is, no copy
        if fused is None and any(t is None for t in w):
            continue  # reported as missing by the caller
        if fused is None:
            out[pre + "qkv.weight"] = torch.cat(w)
        biases = [sd.get(pre + f"{p}_bias") for p in "qkv"]
        if biases[0] is not None or biases[2] is not None:
            dim = fused.shape[0] // 3 if fused is not None else w[0].shape[0]
            zeros = torch.zeros(dim, dtype=(fused if fused is not None else w[0]).dtype)
            out[pre + "qkv.bias"] = torch.cat([b if b is not None else zeros for b in biases])
        consumed.update(pre + f"{p}_{t}" for p in "qkv" for t in ("weight", "bias"))
    return out


# mmaction2 1.x (`mmaction/models/backbones/vit_mae.py` in a Recognizer3D): mmcv's PatchEmbed calls
# its conv `projection`, its FFN is `layers.0.0` (Linear + act) and `layers.1` (Linear), the head is
# `cls_head.fc_cls`, and the sinusoid table is a persistent `pos_embed` buffer.
_MMACTION = [
    (re.compile(r"^backbone\.patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^backbone\.blocks\.(\d+)\.mlp\.layers\.0\.0\."), r"blocks.\1.mlp.fc1."),
    (re.compile(r"^backbone\.blocks\.(\d+)\.mlp\.layers\.1\."), r"blocks.\1.mlp.fc2."),
    (re.compile(r"^backbone\."), ""),
    (re.compile(r"^cls_head\.fc_cls\."), "head."),
]


def _rename_hf(key: str) -> str:
    m = re.match(r"^videomae\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
    qkv = re.match(
        r"^videomae\.encoder\.layer\.(\d+)\.attention\.attention\.(?:(query|key|value)\.(weight|bias)|(q|v)_bias)$", key
    )
    if qkv:
        part = (qkv.group(2) or qkv.group(4))[0]
        return f"blocks.{qkv.group(1)}.attn.{part}_{qkv.group(3) or 'bias'}"
    if m and m.group(2) in _HF_BLOCK:
        return f"blocks.{m.group(1)}.{_HF_BLOCK[m.group(2)]}.{m.group(3)}"
    for src, dst in _HF_TOP.items():
        if key.startswith(src + "."):
            return dst + key[len(src) :]
    return key


def _rename_mmaction(key: str) -> str:
    for pattern, repl in _MMACTION:  # each applies at most once; none matches another's output
        key = pattern.sub(repl, key)
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face, original VideoMAE / VideoMAE V2, or mmaction2 1.x state dict into our layout.

    Keys this function does not recognise are left as they are, so the strict load that follows
    names them. mmaction2's `pos_embed` buffer is kept under that name: the builder checks its token
    count against the config and drops it (ours is recomputed).
    """
    if any(k.startswith("embeddings.patch_embeddings.") for k in state_dict):  # no "videomae." prefix, no head
        raise StaError(
            "not a VideoMAE classifier checkpoint: transformers' VideoMAEModel (the encoder without a "
            "classification head); use a fine-tuned one (VideoMAEForVideoClassification)"
        )
    staged: dict[str, torch.Tensor] = {}
    hf = any(k.startswith("videomae.") for k in state_dict)
    mm = any(k.startswith("backbone.") for k in state_dict)
    for key, t in state_dict.items():
        new = _rename_hf(key) if hf else _rename_mmaction(key) if mm else key
        m = re.match(r"^blocks\.(\d+)\.attn\.(q_bias|v_bias)$", new)
        if m:
            new = f"blocks.{m.group(1)}.attn.{m.group(2)[0]}_bias"
        staged[new] = t
    consumed: set[str] = set()
    fused = _fuse_qkv(staged, consumed)
    out = {k: v for k, v in staged.items() if k not in consumed}
    out.update(fused)
    return out


def shapes_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """What the weights (our layout) fix: widths, depth, patch, classes, biases, pooling, layer scale."""
    try:
        w = sd["patch_embed.proj.weight"]  # (D, C, t, p, p)
        depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))), default=-1)
        mlp_dim = sd["blocks.0.mlp.fc1.weight"].shape[0]
        num_classes = sd["head.weight"].shape[0]
    except KeyError as e:
        raise StaError(f"not a VideoMAE classifier checkpoint: cannot find {e} in its weights") from None
    except IndexError:
        raise StaError("not a VideoMAE classifier checkpoint: a weight it needs is a scalar") from None
    if w.dim() != 5 or w.shape[3] != w.shape[4]:
        raise StaError(f"not a VideoMAE checkpoint: patch_embed.proj.weight has shape {tuple(w.shape)}")
    return dict(
        embed_dim=w.shape[0],
        depth=depth,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
        patch_size=w.shape[3],
        tubelet_size=w.shape[2],
        in_chans=w.shape[1],
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        use_mean_pooling="fc_norm.weight" in sd,
        layer_scale="blocks.0.gamma_1" in sd,
    )


def released(shapes: dict) -> tuple[str, int] | None:
    """(name, heads) of the released architecture these weights have, if any."""
    if (
        shapes["tubelet_size"] != 2
        or shapes["mlp_dim"] != _released_mlp(shapes["embed_dim"])
        or shapes["in_chans"] != 3
    ):
        return None
    return RELEASED.get((shapes["embed_dim"], shapes["depth"], shapes["patch_size"]))


def _released_mlp(embed: int) -> int:
    return 6144 if embed == 1408 else 4 * embed  # ViT-g: mlp ratio 48/11
