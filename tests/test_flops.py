"""GFLOPs as the paper reports them (Table 2), counted on the meta device through the real forward."""

from __future__ import annotations

import pytest
import torch

from sta_cli.flops import count_flops, gflops
from sta_cli.models.videomae import VideoMAE, VideoMAEConfig
from sta_cli.pruning import STAConfig

SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "H": (1280, 32, 16)}
TABLE_2 = {  # K400, 16x224^2, fvcore convention
    "S": {0: 57, 32: 42, 48: 35, 64: 29},
    "B": {0: 180, 32: 136, 48: 116, 64: 96},
    "L": {0: 597, 32: 446, 48: 376, 64: 308},
    "H": {0: 1192, 32: 890, 48: 748, 64: 611},
}


@pytest.mark.parametrize("size", SIZES)
def test_gflops_match_paper_table_2(size):
    dim, depth, heads = SIZES[size]
    with torch.device("meta"):  # no weights allocated, even for ViT-H
        model = VideoMAE(VideoMAEConfig(embed_dim=dim, depth=depth, num_heads=heads, mlp_dim=4 * dim))
    for r1, paper in TABLE_2[size].items():
        model.set_sta(STAConfig(r1=r1))
        assert gflops(model) == pytest.approx(paper, rel=0.02), (size, r1)


def test_counts_one_flop_per_multiply_add():
    cfg = VideoMAEConfig(
        embed_dim=32, depth=3, num_heads=2, mlp_dim=64, num_classes=5, image_size=32, patch_size=16, num_frames=4
    )
    n, d = cfg.num_tokens, cfg.embed_dim
    per_block = n * (3 * d * d + d * d + 2 * d * cfg.mlp_dim) + 2 * n * n * d  # linears + QK^T + AV
    embed = n * d * 3 * 2 * 16 * 16
    expected = embed + cfg.depth * per_block + d * cfg.num_classes
    assert count_flops(VideoMAE(cfg), (1, 3, 4, 32, 32)) == expected
