"""STA keeps exactly the tokens the reference keeps; every option does what it says."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sta_cli.errors import StaError
from sta_cli.models.videomae import VideoMAE, VideoMAEConfig
from sta_cli.pruning import STAConfig, Stage, plan_stages, stage_keep_indices

CFG = VideoMAEConfig(
    embed_dim=32, depth=6, num_heads=2, mlp_dim=64, num_classes=6, image_size=96, patch_size=16, num_frames=16
)
# 8 temporal slices x 36 tokens per frame


def tiny_model(sta: STAConfig | None = None, seed: int = 0) -> VideoMAE:
    torch.manual_seed(seed)
    model = VideoMAE(CFG, sta).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    return model


# --- an independent, per-sample port of the reference's merge (docs/algorithm.md) ------------------


def reference_merge(x, metric, r, groups, backward):
    """One sample. x (N, d) with the original position appended as the last channel, metric (N, c)."""
    N = x.shape[0]
    n = N // groups
    xs = x.reshape(groups, n, -1)
    ms = metric.reshape(groups, n, -1)
    ms = ms / ms.norm(dim=-1, keepdim=True)
    act = xs[..., :-1].abs().sum(-1)
    act = (act - act.min(-1, keepdim=True).values) / (
        act.max(-1, keepdim=True).values - act.min(-1, keepdim=True).values
    )
    perm = list(range(groups))[::-1] if backward else list(range(groups))

    # first visited group: bipartite drop
    g0x, g0m = xs[perm[0]], ms[perm[0]]
    a, b = g0m[::2], g0m[1::2]
    best = (a @ b.T).max(-1).values
    src_rank = best.argsort()
    reordered_x = torch.cat([g0x[1::2], g0x[::2][src_rank]])
    reordered_m = torch.cat([g0m[1::2], g0m[::2][src_rank]])
    out = {perm[0]: reordered_x[: n - r]}

    prev_m, s = reordered_m, None
    for t in range(1, groups):
        g = perm[t]
        trans = (ms[g] @ prev_m.T).softmax(dim=0)  # over the current group's tokens
        s = trans.sum(-1, keepdim=True) if s is None else trans @ s
        score = s[:, 0] * (1 - act[g])
        keep = score.topk(n - r, largest=False).indices
        out[g] = xs[g][keep]
        prev_m = ms[g][keep]
        s = s[keep]
        s = s / s.sum()
    return torch.cat([out[g] for g in range(groups)])


@torch.no_grad()
def reference_forward(model: VideoMAE, clip: torch.Tensor, r: int):
    """The reference pipeline on our blocks: merge after blocks 0, L//3, 2L//3 with 8, 4, 2 groups, F-B-F."""
    n_t = model.cfg.grid[0]
    logits, kept = [], []
    for sample in clip:
        x = model.patch_embed(sample[None]) + model.pos_embed
        pos = torch.arange(x.shape[1], dtype=x.dtype)[None, :, None]
        stages = {0: (n_t, False), model.cfg.depth // 3: (n_t // 2, True), 2 * model.cfg.depth // 3: (n_t // 4, False)}
        sample_kept = []
        for i, blk in enumerate(model.blocks):
            x, (q, k, v) = blk(x)
            if i in stages:
                groups, backward = stages[i]
                merged = reference_merge(torch.cat([x[0], pos[0]], -1), k.mean(1)[0], r, groups, backward)
                x, pos = merged[None, :, :-1], merged[None, :, -1:]
                sample_kept.append(pos[0, :, 0].long())
        logits.append(model.head(model.fc_norm(x.mean(1)))[0])
        kept.append(sample_kept)
    return torch.stack(logits), [torch.stack([k[s] for k in kept]) for s in range(3)]


@pytest.mark.parametrize("r1", [1, 7, 12, 18])
@torch.no_grad()
def test_keeps_exactly_the_reference_tokens(r1):
    model = tiny_model(STAConfig(r1=r1))
    torch.manual_seed(r1)
    clip = torch.randn(3, 3, 16, 96, 96)
    logits = model(clip)
    ref_logits, ref_kept = reference_forward(model, clip, r1)
    for ours, ref in zip(model.kept_positions, ref_kept):
        assert torch.equal(ours, ref)
    assert torch.allclose(logits, ref_logits, atol=1e-5)


def test_hand_checked_order_and_second_group_special_case():
    # Two groups of four 2-d tokens, r = 1, temporal score only (semantic weight off).
    metric = torch.tensor([[1, 0], [1, 0], [0, 1], [0.6, 0.8], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)
    x = torch.ones(1, 8, 3)
    stage = Stage(block=0, groups=2, drop=1, backward=False, tokens_in=8)
    idx = stage_keep_indices(
        x, metric[None], torch.arange(8)[None], stage, STAConfig(r1=1, score="temporal"), 0, (2, 2)
    )
    # Group 0, bipartite: candidates 0 and 2 (even), targets 1 and 3. Token 0's best match is 1.0
    # (identical to token 1), token 2's is 0.8 (token 3): order [1, 3, 2, 0], drop the last -> [1, 3, 2].
    # Group 1 against ALL four group-0 tokens with s = column sums of the transition:
    # s = [1.626, 1.369, 0.450, 0.555] for tokens 4..7 -> drop 4, keep ascending [6, 7, 5].
    # (Against only the kept [1, 3, 2] the order would be [7, 6, 4]: token 5 dropped instead.)
    assert idx.tolist() == [[1, 3, 2, 6, 7, 5]]


def test_r1_zero_is_the_unpruned_model():
    clip = torch.randn(2, 3, 16, 96, 96)
    with torch.no_grad():
        plain = tiny_model()(clip)
        zero = tiny_model(STAConfig(r1=0))
        assert torch.equal(zero(clip), plain) and zero.kept_positions == [] and zero.stages == []


@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("decreasing", [288, 224, 192, 176]),  # 8x36 -> -8x8, -4x8, -2x8
        ("constant", [288, 224, 160, 96]),  # -8x8 each stage
        ("increasing", [288, 224, 96, 0]),
    ],
)
def test_token_counts_per_stage(schedule, expected):
    if expected[-1] == 0:
        with pytest.raises(StaError, match="choose a smaller r1"):
            tiny_model(STAConfig(r1=8, schedule=schedule))
        return
    model = tiny_model(STAConfig(r1=8, schedule=schedule))
    assert model.tokens_per_stage == expected
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 96, 96))
    assert [p.shape for p in model.kept_positions] == [torch.Size([2, n]) for n in expected[1:]]


@pytest.mark.parametrize("options", [{}, {"order": "bbb"}, {"first_group": "grid"}, {"score": "random"}])
def test_kept_positions_unique_in_range_and_nested(options):
    model = tiny_model(STAConfig(r1=10, **options))
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 96, 96))
    previous = [set(range(CFG.num_tokens))] * 2
    for kept in model.kept_positions:
        for b, row in enumerate(kept):
            assert len(set(row.tolist())) == row.numel()
            assert 0 <= row.min() and row.max() < CFG.num_tokens
            assert set(row.tolist()) < previous[b]  # a later stage keeps a strict subset of the earlier one
        previous = [set(row.tolist()) for row in kept]
    n_t, h, w = CFG.grid
    first = model.kept_positions[0][0]
    # Stage 1 drops exactly r1 tokens from every temporal slice.
    assert torch.bincount(first // (h * w), minlength=n_t).tolist() == [h * w - 10] * n_t


@pytest.mark.parametrize("r1", [-1, 19, 100])
def test_r1_out_of_range(r1):
    with pytest.raises(StaError, match="r1"):
        tiny_model(STAConfig(r1=r1))


def test_frames_must_split_into_four_groups():
    with pytest.raises(StaError, match="divisible by 4"):
        plan_stages(STAConfig(r1=4), depth=12, n_t=6, n_s=196)


def test_unknown_option_value():
    with pytest.raises(StaError, match="order must be one of"):
        STAConfig(r1=4, order="fwd")


@torch.no_grad()
def test_every_option_changes_the_kept_tokens():
    torch.manual_seed(5)
    clip = torch.randn(2, 3, 16, 96, 96)
    base = STAConfig(r1=10)

    def kept(sta):
        model = tiny_model(sta)
        model(clip)
        return torch.cat(model.kept_positions, 1)

    reference = kept(base)
    variations = {
        "first_group": ["random", "grid"],
        "order": ["bfb", "fff", "bbb"],
        "similarity": ["query", "value", "feature"],
        "score": ["temporal", "semantic", "random"],
        "schedule": ["constant"],
    }
    for field, values in variations.items():
        for value in values:
            other = kept(dataclasses.replace(base, **{field: value}))
            assert other.shape != reference.shape or not torch.equal(other, reference), (field, value)
    random0 = kept(dataclasses.replace(base, first_group="random", seed=0))
    assert not torch.equal(random0, kept(dataclasses.replace(base, first_group="random", seed=1)))
    assert torch.equal(random0, kept(dataclasses.replace(base, first_group="random", seed=0)))  # seeded


def test_grid_drops_one_token_per_cell():
    # 6x6 tokens per frame, r = 4: 2x2 cells of 3x3 tokens, one token dropped in each.
    model = tiny_model(STAConfig(r1=4, first_group="grid"))
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 96, 96))
    _, h, w = CFG.grid
    first_slice = model.kept_positions[0][0]
    first_slice = first_slice[first_slice < h * w]
    dropped = sorted(set(range(h * w)) - set(first_slice.tolist()))
    cells = sorted(((p // w) // 3) * 2 + (p % w) // 3 for p in dropped)
    assert cells == [0, 1, 2, 3]


def test_batch_items_are_independent():
    model = tiny_model(STAConfig(r1=12))
    clip = torch.randn(3, 3, 16, 96, 96)
    with torch.no_grad():
        batched = model(clip)
        kept = [k.clone() for k in model.kept_positions]
        for i in range(3):
            single = model(clip[i : i + 1])
            assert torch.allclose(single, batched[i : i + 1], atol=1e-5)
            assert all(torch.equal(k[i : i + 1], s) for k, s in zip(kept, model.kept_positions))
