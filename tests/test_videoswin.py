"""Video Swin: torchvision / original-layout parity, STA on the stage grids, FLOPs vs Table 3, loading, prune.

The parity fixtures (tests/fixtures/swin/) were produced once by scripts/make_swin_fixtures.py with
torchvision's SwinTransformer3d, which cannot be installed beside the project's torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import reference_index, tiny_swin_config, write_swin
from safetensors.torch import load_file, save_file

import sta_cli
from sta_cli.errors import StaError
from sta_cli.flops import gflops
from sta_cli.models import family_of, videoswin
from sta_cli.models.registry import ALIASES, Alias
from sta_cli.models.videoswin import VideoSwin, VideoSwinConfig
from sta_cli.pruning import STAConfig, stage_keep_indices
from sta_cli.pruning.swin import max_swin_r1, nearest_kept_fill, swin_drops

FIXTURES = Path(__file__).parent / "fixtures" / "swin"
CASES = ("grid", "padded")

# Small enough to run in milliseconds; grids (4,16,16), (4,8,8), (4,4,4), (4,2,2); r1 <= 27.
TINY = tiny_swin_config(depths=(2, 2, 2, 2), num_frames=8)


def tiny_model(seed: int = 0, sta: STAConfig | None = None) -> VideoSwin:
    torch.manual_seed(seed)
    model = VideoSwin(TINY, sta).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            elif "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(2, 3, TINY.num_frames, TINY.image_size, TINY.image_size)


# The fixtures are not a released size: what their weights cannot tell must be given.
FIXTURE_ARCH = dict(image_size=48, num_frames=8, mean="0.485,0.456,0.406", std="0.229,0.224,0.225")


def fixture_io(case: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / f"{case}_io.safetensors")


def to_mmaction_layout(tv: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision keys -> the original release's (mmaction) keys, written independently of the loader."""
    out = {}
    for k, v in tv.items():
        parts = k.split(".")
        if parts[0] == "features":
            f = int(parts[1])
            if f % 2 == 0:
                rest = ".".join(parts[3:]).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
                k = f"backbone.layers.{f // 2}.blocks.{parts[2]}.{rest}"
            else:
                k = f"backbone.layers.{f // 2}.downsample.{'.'.join(parts[2:])}"
        elif parts[0] == "head":
            k = "cls_head.fc_cls." + parts[1]
        else:
            k = "backbone." + k
        out[k] = v
    return out


# --- parity ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_torchvision_parity(case):
    """The fixture file as torchvision names it loads through sta_cli.load and gives torchvision's logits."""
    model = sta_cli.load(FIXTURES / f"{case}_torchvision.safetensors", **FIXTURE_ARCH)
    assert model.card.family == "videoswin"
    spec = json.loads((FIXTURES / f"{case}.json").read_text())
    assert model.cfg.window_size == tuple(spec["window_size"]) and model.cfg.num_heads == tuple(spec["num_heads"])
    io = fixture_io(case)
    with torch.no_grad():
        logits = model(io["input"])
    torch.testing.assert_close(logits, io["logits"], atol=1e-5, rtol=1e-5)
    assert model.kept_positions == []


@pytest.mark.parametrize("case", CASES)
def test_original_mmaction_layout(tmp_path, case):
    """An mmcv checkpoint ({'state_dict': backbone.* + cls_head.fc_cls.*, 'meta': ...}) gives the same logits."""
    sd = to_mmaction_layout(load_file(FIXTURES / f"{case}_torchvision.safetensors"))
    assert any(k.startswith("backbone.layers.0.downsample.") for k in sd)
    torch.save({"meta": {"epoch": 30}, "state_dict": sd}, tmp_path / "swin.pth")
    model = sta_cli.load(tmp_path / "swin.pth", **FIXTURE_ARCH)
    io = fixture_io(case)
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=1e-5, rtol=1e-5)


def test_layout_mapping_and_family():
    tv = load_file(FIXTURES / "grid_torchvision.safetensors")
    ours = videoswin.checkpoint_filter_fn(tv)
    assert "layers.0.blocks.1.mlp.fc2.weight" in ours and "layers.2.downsample.reduction.weight" in ours
    assert not any(k.endswith("relative_position_index") for k in ours)
    assert videoswin.checkpoint_filter_fn(to_mmaction_layout(tv)).keys() == ours.keys()
    for sd in (tv, to_mmaction_layout(tv), ours):
        assert family_of({}, None, sd) == "videoswin"
    assert family_of({}, None, {"patch_embed.proj.weight": 0, "blocks.0.norm1.weight": 0}) == "videomae"


def test_window_inference():
    assert videoswin.window_from_table(15 * 13 * 13) == (8, 7, 7)
    assert videoswin.window_from_table(31 * 13 * 13) == (16, 7, 7)  # the SSv2 window1677
    assert videoswin.window_from_table(3 * 5 * 5, reference_index((2, 3, 3))) == (2, 3, 3)
    assert videoswin.window_from_table(3 * 5 * 5, stated=(2, 3, 3)) == (2, 3, 3)
    with pytest.raises(StaError, match="no attention window"):
        videoswin.window_from_table(2 * 13 * 13)


def test_bad_checkpoints(tmp_path):
    sd = videoswin.checkpoint_filter_fn(load_file(FIXTURES / "grid_torchvision.safetensors"))
    del sd["head.weight"]
    save_file(sd, tmp_path / "nohead.safetensors")
    with pytest.raises(StaError, match="head.weight"):
        sta_cli.load(tmp_path / "nohead.safetensors", **FIXTURE_ARCH)
    sd = load_file(FIXTURES / "grid_torchvision.safetensors")
    sd["features.0.0.attn.extra"] = torch.zeros(1)
    save_file(sd, tmp_path / "extra.safetensors")
    with pytest.raises(StaError, match="unknown keys layers.0.blocks.0.attn.extra"):
        sta_cli.load(tmp_path / "extra.safetensors", **FIXTURE_ARCH)


# --- STA on the stage grids ---------------------------------------------------------------------


def brute_force_fill(kept: torch.Tensor, grid) -> torch.Tensor:
    """Nearest kept token of the same slice, ties to the first in raster order, by plain loops."""
    T, H, W = grid
    out = torch.empty(kept.shape[0], T * H * W, dtype=torch.long)
    for b in range(kept.shape[0]):
        ks = kept[b].tolist()
        for p in range(T * H * W):
            t, y, x = p // (H * W), (p % (H * W)) // W, p % W
            best = min(
                (((y - (k % (H * W)) // W) ** 2 + (x - k % W) ** 2, j) for j, k in enumerate(ks) if k // (H * W) == t)
            )
            out[b, p] = best[1]
    return out


def test_nearest_kept_fill_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    T, H, W, keep = 3, 5, 7, 6
    kept = torch.stack(
        [
            torch.cat([torch.randperm(H * W, generator=gen)[:keep].sort().values + t * H * W for t in range(T)])
            for _ in range(2)
        ]
    )
    fill = nearest_kept_fill(kept, (T, H, W))
    assert torch.equal(fill, brute_force_fill(kept, (T, H, W)))
    assert torch.equal(fill.gather(1, kept), torch.arange(T * keep).expand(2, -1))  # kept positions map to themselves
    # A tie: positions 0 and 2 of a 1x3 slice are kept; 1 is equidistant and goes to the first.
    assert nearest_kept_fill(torch.tensor([[0, 2]]), (1, 1, 3)).tolist() == [[0, 0, 1]]


def test_schedule_and_validation():
    assert swin_drops(192) == (192, 72, 24) and swin_drops(256) == (256, 96, 32) and swin_drops(320) == (320, 120, 40)
    assert swin_drops(100) == (100, 38, 13)  # 37.5 and 12.5 round half up
    assert max_swin_r1([784, 196, 49]) == 387  # 388 would drop round(48.5) = 49 of 49 at stage 4
    with torch.device("meta"):
        t = VideoSwin(VideoSwinConfig(), STAConfig(r1=256))
    assert t.tokens_per_stage == [50176, 16 * 528, 16 * 100, 16 * 17]
    assert [(s.block, s.groups, s.drop, s.backward) for s in t.stages] == [
        (1, 16, 256, False),
        (2, 16, 96, True),
        (3, 16, 32, False),
    ]
    with pytest.raises(StaError, match="between 0 and 387"):
        t.set_sta(STAConfig(r1=388))
    with pytest.raises(StaError, match="decreasing"):
        t.set_sta(STAConfig(r1=64, schedule="constant"))
    t.set_sta(STAConfig())
    assert t.stages == [] and t.tokens_per_stage == [50176, 12544, 3136, 784]


def test_r1_zero_is_the_unpruned_model(clip):
    model = tiny_model()
    with torch.no_grad():
        ref = model(clip)
        model.set_sta(STAConfig(r1=24))
        assert not torch.allclose(model(clip), ref)
        model.set_sta(STAConfig(r1=0))
        assert torch.equal(model(clip), ref) and model.kept_positions == []


def merged_keys(blk, full_in: torch.Tensor, grid) -> torch.Tensor:
    """Keys of `blk` on a full grid, heads averaged, averaged over 2x2 cells (even grid sizes)."""
    B, (T, H, W) = full_in.shape[0], grid
    k = blk.attn.qkv(blk.norm1(full_in)).view(B, T, H, W, 3, blk.attn.num_heads, -1)[..., 1, :, :].mean(-2)
    cells = (k[:, :, 0::2, 0::2] + k[:, :, 1::2, 0::2] + k[:, :, 0::2, 1::2] + k[:, :, 1::2, 1::2]) / 4
    return cells.flatten(1, 3)


def reference_forward(model: VideoSwin, video: torch.Tensor, similarity: str):
    """STA Swin the slow way: every pruned block runs densely on the filled grid (brute-force fill),
    its output read back at the kept positions; the kept sets are recomputed from independently
    built similarity features. Returns logits and kept positions."""
    x = model.patch_embed(video)
    B, kept_all, last_in, prev_grid = x.shape[0], [], None, None
    for i, layer in enumerate(model.layers):
        grid = tuple(x.shape[1:4])
        tokens = x.flatten(1, 3)
        fill = None
        if i > 0:
            if similarity == "feature":
                metric = tokens
            else:
                metric = merged_keys(model.layers[i - 1].blocks[-1], last_in, prev_grid)
            step = model.stages[i - 1]
            positions = torch.arange(tokens.shape[1]).expand(B, -1)
            kept = stage_keep_indices(tokens, metric, positions, step, model.sta, i - 1, grid[1:]).sort(-1).values
            kept_all.append(kept)
            fill = brute_force_fill(kept, grid)
            tokens = tokens.gather(1, kept[..., None].expand(-1, -1, tokens.shape[-1]))
        for blk in layer.blocks:
            full = tokens if fill is None else tokens.gather(1, fill[..., None].expand(-1, -1, tokens.shape[-1]))
            last_in = full
            out, _ = blk(full, videoswin.window_index(grid, TINY.window_size, blk.shifted, full))
            tokens = out if fill is None else out.gather(1, kept[..., None].expand(-1, -1, out.shape[-1]))
        prev_grid = grid
        if layer.downsample is not None:
            full = tokens if fill is None else tokens.gather(1, fill[..., None].expand(-1, -1, tokens.shape[-1]))
            x = layer.downsample(full.view(B, *grid, -1))
    return model.head(model.norm(tokens).mean(1)), kept_all


@pytest.mark.parametrize("kept_queries", [False, True])
@pytest.mark.parametrize("similarity", ["key", "feature"])
def test_pruned_forward_matches_dense_reference(clip, similarity, kept_queries, monkeypatch):
    if kept_queries:  # eager attention from kept positions only, which windows this small skip
        monkeypatch.setattr(videoswin, "KEPT_QUERY_MIN_MACS", 0)
    model = tiny_model(sta=STAConfig(r1=24, similarity=similarity))
    with torch.no_grad():
        logits = model(clip)
        ref_logits, ref_kept = reference_forward(model, clip, similarity)
    assert [p.shape for p in model.kept_positions] == [(2, 4 * 40), (2, 4 * 7), (2, 4 * 1)]
    for got, want in zip(model.kept_positions, ref_kept):
        assert torch.equal(got, want)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_eager_attends_from_kept_positions_only(monkeypatch):
    """In a pruned stage eager attention runs from the kept positions only; the result equals whole-
    window attention (what exported graphs run) read back at those positions, shifted windows and
    (window, sample) pairs with nothing kept included."""
    torch.manual_seed(0)
    grid, window, C = (4, 8, 8), (2, 4, 4), 24
    attn = videoswin.WindowAttention3d(C, 2, window, qkv_bias=True)
    y, x = torch.arange(64) // 8, torch.arange(64) % 8
    right_half = torch.nonzero(x >= 4).flatten()  # sample 0 keeps nothing in the left windows
    below_diagonal = torch.nonzero(y >= x).flatten()[:32]
    per_slice = torch.stack([right_half, below_diagonal])  # (B, 32)
    kept = (per_slice[:, None, :] + 64 * torch.arange(4)[None, :, None]).flatten(1)  # (B, 4 * 32)
    fill = nearest_kept_fill(kept, grid)
    qkv = torch.randn(2, kept.shape[1], 3 * C)
    monkeypatch.setattr(videoswin, "KEPT_QUERY_MIN_MACS", 0)  # windows this small keep whole windows otherwise
    for shifted in (False, True):
        index = videoswin.window_index(grid, window, shifted, qkv[..., :C], kept, fill)
        assert sum(index.query_counts) == kept.numel() and (shifted or 0 in index.query_counts)
        with monkeypatch.context() as m:
            m.setattr(videoswin, "tracing", lambda: True)  # the exported graphs' path
            whole = videoswin.window_index(grid, window, shifted, qkv[..., :C], kept, fill)
            assert whole.query_counts is None
            want = attn.attend(qkv, whole)
        torch.testing.assert_close(attn.attend(qkv, index), want, atol=1e-6, rtol=1e-5)


def test_kept_positions_are_per_slice_and_batch_independent(clip):
    model = tiny_model(sta=STAConfig(r1=20))
    with torch.no_grad():
        batched = model(clip)
        kept = model.kept_positions
        singles = [model(clip[i : i + 1]) for i in range(2)]
        single_kept = [model.kept_positions for _ in range(1)]
    torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=1e-5)
    assert torch.equal(kept[-1][1:], single_kept[0][-1])  # the last single forward was sample 1
    for positions, (t, h, w), drop in zip(kept, TINY.stage_grids[1:], swin_drops(20)):
        for row in positions:
            assert torch.equal(row, row.unique())  # sorted, distinct
            assert torch.equal(torch.bincount(row // (h * w), minlength=t), torch.full((t,), h * w - drop))


@pytest.mark.parametrize(
    "options",
    [
        dict(similarity="query"),
        dict(similarity="value"),
        dict(first_group="grid"),
        dict(order="fff"),
        dict(score="semantic"),
    ],
)
def test_sta_options_run(clip, options):
    """Each option reaches the model: it keeps other tokens than the default STA on the same clip."""
    model = tiny_model(sta=STAConfig(r1=16))
    with torch.no_grad():
        model(clip)
    default = [p.clone() for p in model.kept_positions]
    model.set_sta(STAConfig(r1=16, **options))
    with torch.no_grad():
        assert torch.isfinite(model(clip)).all()
    assert [p.shape[1] for p in model.kept_positions] == [4 * 48, 4 * 10, 4 * 2]
    assert any(not torch.equal(a, b) for a, b in zip(default, model.kept_positions)), options


def test_sta_rejects_other_input_sizes():
    model = tiny_model(sta=STAConfig(r1=8))
    with pytest.raises(StaError, match="8x64"):
        model(torch.randn(1, 3, 8, 96, 96))
    model.set_sta(STAConfig())
    assert model(torch.randn(1, 3, 8, 96, 96)).shape == (1, 5)  # unpruned, any size works


# --- FLOPs vs Table 3 ---------------------------------------------------------------------------

TABLE3 = {  # size: (embed_dim, depths, heads), GFLOPs at r1 = 0, 192, 256, 320 (32x224^2)
    "T": ((96, (2, 2, 6, 2), (3, 6, 12, 24)), (88, 68, 61, 54)),
    "S": ((96, (2, 2, 18, 2), (3, 6, 12, 24)), (166, 121, 106, 91)),
    "B": ((128, (2, 2, 18, 2), (4, 8, 16, 32)), (282, 202, 176, 149)),
}


@pytest.mark.parametrize("size", TABLE3)
def test_gflops_match_table3(size):
    (embed, depths, heads), paper = TABLE3[size]
    with torch.device("meta"):
        model = VideoSwin(VideoSwinConfig(embed_dim=embed, depths=depths, num_heads=heads))
    for r1, want in zip((0, 192, 256, 320), paper):
        model.set_sta(STAConfig(r1=r1))
        got = gflops(model)
        assert abs(got / want - 1) < 0.02, (size, r1, got, want)


# --- aliases, download cache, prune ----------------------------------------------------------------


def test_aliases_point_at_torchvision_weights():
    for name, file in [
        ("videoswin-tiny", "swin3d_t-7615ae03.pth"),
        ("videoswin-base-22k", "swin3d_b_22k-7c6ae6fa.pth"),
    ]:
        a = ALIASES[name]
        assert a.family == "videoswin" and a.is_url and a.source == f"https://download.pytorch.org/models/{file}"
        assert a.classes == 400 and a.frame_stride == 2
    assert {"videoswin-small", "videoswin-base"} <= ALIASES.keys()


def test_alias_loads_from_populated_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("STA_CACHE", str(tmp_path))
    monkeypatch.setenv("STA_OFFLINE", "1")
    with pytest.raises(StaError, match="swin3d_t-7615ae03.pth is not in the cache"):
        sta_cli.load("videoswin-tiny")
    shutil.copy(FIXTURES / "grid_torchvision.safetensors", tmp_path / "x.safetensors")
    torch.save(load_file(tmp_path / "x.safetensors"), tmp_path / "swin3d_t-7615ae03.pth")
    model = sta_cli.load("videoswin-tiny", r1=0)
    assert model.card.source_name == "videoswin-tiny" and model.card.family == "videoswin"
    assert model.preprocessing["num_frames"] == 32 and model.preprocessing["frame_stride"] == 2
    io = fixture_io("grid")
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=1e-5, rtol=1e-5)


def test_url_download_verifies_sha256_prefix(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    torch.save(load_file(FIXTURES / "grid_torchvision.safetensors"), src / "w.pth")
    digest = hashlib.sha256((src / "w.pth").read_bytes()).hexdigest()
    good, bad = src / f"tiny-{digest[:8]}.pth", src / "tiny-00000000.pth"
    shutil.copy(src / "w.pth", good)
    shutil.copy(src / "w.pth", bad)
    monkeypatch.setenv("STA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STA_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name, path in [("test-good", good), ("test-bad", bad), ("test-missing", src / "nope-12345678.pth")]:
        monkeypatch.setitem(ALIASES, name, Alias(name, path.as_uri(), "videoswin", "T", 10, "kinetics400", 2))
    model = sta_cli.load("test-good")
    assert (tmp_path / "cache" / good.name).is_file() and model.cfg.embed_dim == 6
    with pytest.raises(StaError, match="corrupt"):
        sta_cli.load("test-bad")
    assert not (tmp_path / "cache" / bad.name).exists()
    with pytest.raises(StaError, match="cannot be downloaded"):
        sta_cli.load("test-missing")


def test_api_prune_small_input(tmp_path):
    """sta_cli.prune on a folder whose config sets a small input: artifact, FLOPs, r1=0 reload identity."""
    folder = write_swin(tmp_path / "tiny-swin", tiny_model(), labels=[f"a{i}" for i in range(5)])
    report = sta_cli.prune(folder, 24, tmp_path / "out")
    assert report.model.family == "videoswin"
    assert report.tokens.unpruned == [1024, 256, 64, 16] and report.tokens.pruned == [1024, 160, 28, 4]
    assert report.validation.kept_tokens_per_stage == [160, 28, 4]
    assert report.validation.reproduces_source.max_abs_diff == 0
    assert report.gflops.pruned < report.gflops.unpruned
    pruned = sta_cli.load(tmp_path / "out")
    assert pruned.sta.r1 == 24 and pruned.labels[0] == "a0" and pruned.cfg == TINY


def test_cli_prune_weights_file(tmp_path):
    """`sta prune --model <torchvision-layout Swin file> --image-size 224 --num-frames 32 ...`: r1 = 256."""
    from typer.testing import CliRunner

    from sta_cli.cli import app

    released_input = [
        "--image-size",
        "224",
        "--num-frames",
        "32",
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
    ]
    r = CliRunner().invoke(
        app,
        [
            "prune",
            "--model",
            str(FIXTURES / "grid_torchvision.safetensors"),
            "--r1",
            "256",
            "-o",
            str(tmp_path / "out"),
            "--json",
            *released_input,
        ],
    )
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["tokens"]["pruned"] == [50176, 16 * 528, 16 * 100, 16 * 17]
    assert report["validation"]["reproduces_source"]["ok"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architecture"] == "videoswin"
    r = CliRunner().invoke(
        app,
        [
            "prune",
            "--model",
            str(FIXTURES / "grid_torchvision.safetensors"),
            "--r1",
            "400",
            "-o",
            str(tmp_path / "o2"),
            *released_input,
        ],
    )
    assert r.exit_code != 0 and "between 0 and 387" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o2").exists()


def test_onnx_export_static_shapes(tmp_path):
    """`sta export` of a pruned Swin artifact: static token counts, the fill as plain gathers, ONNX
    Runtime reproducing PyTorch's logits and kept positions (checked by the export's own validation)."""
    from sta_cli.tasks.export import export

    folder = write_swin(tmp_path / "tiny-swin", tiny_swin_config(depths=(2, 1, 1, 1)))
    report = export(folder, "onnx", tmp_path / "onnx", r1=24)
    graph, validation = report.graph, report.validation
    assert graph.not_static == [] and graph.forbidden == [] and graph.topk > 0
    assert graph.outputs["kept_positions_1"] == ["batch", 2 * 40] and graph.outputs["kept_positions_3"] == [
        "batch",
        2 * 1,
    ]
    assert {512, 80, 14, 2} <= set(graph.token_counts)
    assert all(c.ok for c in validation.checks) and validation.max_abs_diff < 1e-4
    assert (tmp_path / "onnx" / "model.onnx").is_file()


# Several windows per slice, windows smaller than the grid and padded (stage grids (2,10,10),
# (2,5,5), (2,3,3), (2,2,2) with a (2,3,3) window), two heads and a shifted block in a pruned stage.
EXPORT_CFG = tiny_swin_config(depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 2), window_size=(2, 3, 3), image_size=40)


def test_export_padded_windows_onnx_and_torchscript(tmp_path):
    """Regression: ONNX export with autograd on (as bench/export_speed.py calls it) failed with "Cannot
    view a tensor ..." (a reshape after SDPA traced as a view), TorchScript tracing with "numpy.ndarray %
    Tensor" (the grid read as traced 0-d tensors). Both now export and reproduce PyTorch at batch 1 and 2."""
    from sta_cli.formats import onnx as onnx_export
    from sta_cli.formats.graph import ExportModule, example_input, output_names
    from sta_cli.formats.validate import Case, validate
    from sta_cli.runtime.ort import session as ort_session
    from sta_cli.tasks.export import export

    torch.manual_seed(0)
    model = VideoSwin(EXPORT_CFG, STAConfig(r1=10)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    assert model.tokens_per_stage == [200, 30, 10, 6]
    names = output_names(model)
    cases = [Case(f"random batch of {b}", example_input(model, b, torch.float32, seed=b)) for b in (1, 2)]
    reference = lambda x: list(ExportModule(model)(x))  # noqa: E731

    with torch.enable_grad():  # what a direct export_onnx call (the benchmark) runs under
        onnx_export.export_onnx(model, tmp_path / "grad.onnx", opset=18, batch=None, metadata={})
    session, _, _ = ort_session(tmp_path / "grad.onnx", "cpu")
    result = validate(lambda x: onnx_export.run_session(session, x), reference, cases, names, names, 1e-4, False)
    assert result.cases == ["random batch of 1", "random batch of 2"]
    assert all(c.ok for c in result.checks), [c.message for c in result.checks if not c.ok]
    assert any("kept positions identical" in c.message for c in result.checks)

    folder = write_swin(tmp_path / "swin", model)
    report = export(folder, "torchscript", tmp_path / "ts", r1=10)  # sta export: validation on by default
    validation = report.validation
    assert report.batch == "dynamic" and "random batch of 2" in validation.cases
    assert all(c.ok for c in validation.checks) and validation.max_abs_diff <= 1e-4
    traced = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    logits, *kept = traced(cases[1].x)
    ref_logits, *ref_kept = reference(cases[1].x)
    assert all(torch.equal(a, b) for a, b in zip(kept, ref_kept)) and [k.shape[1] for k in kept] == [30, 10, 6]
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)


# Stage grids (4,24,24), (4,12,12), (4,6,6), (4,3,3) with a (2,8,8) window: shifted windows (and their
# masks) in stages 1-3, weights (8.4 MB) large next to the token count, as in the released models.
SIZE_CFG = VideoSwinConfig(
    embed_dim=32,
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 4, 8),
    window_size=(2, 8, 8),
    num_frames=8,
    image_size=96,
    num_classes=10,
)


def stored_tensor_bytes(path: Path) -> int:
    """Bytes of tensor data in an ONNX file: initializers and Constant nodes."""
    import onnx

    proto = onnx.load(str(path))
    total = sum(len(t.raw_data) for t in proto.graph.initializer)
    for node in proto.graph.node:
        total += sum(len(a.t.raw_data) for a in node.attribute if a.HasField("t"))
    return total


def test_onnx_tensors_stay_near_the_weights(tmp_path):
    """The tensors an ONNX export stores are at most 1.1x the weights: shift masks and relative
    position indices are built in the graph from small vectors, once per stage, not stored per block
    (Swin-T once stored 115 MB of masks beside 113 MB of weights; this model then stored 1.3x).
    Pruned, so the graph has both kinds of stage: stage 1 runs unpruned, stages 2-4 on kept tokens.
    The graph's nodes add ~1 kB each (exporter metadata), which only a model this small notices;
    bench/swin_speed.py checks the whole file of Swin-T and Swin-B against the bound."""
    from sta_cli.formats.onnx import export_onnx

    model = VideoSwin(SIZE_CFG, STAConfig(r1=40)).eval()
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    export_onnx(model, tmp_path / "m.onnx", opset=18, batch=None, metadata={})
    stored = stored_tensor_bytes(tmp_path / "m.onnx")
    assert stored <= 1.1 * weights, f"{stored / 1e6:.2f} MB of tensors for {weights / 1e6:.2f} MB of weights"


def test_an_ambiguous_bias_table_is_refused_not_guessed():
    """225 rows fit windows (1, 8, 8), (5, 3, 3), (13, 2, 2) and 33 more: without a
    relative_position_index buffer or a config, sta refuses instead of running one of them."""
    from sta_cli.models.videoswin import window_from_table

    assert window_from_table(2535) == (8, 7, 7) and window_from_table(5239) == (16, 7, 7)
    assert window_from_table(225, reference_index((5, 3, 3))) == (5, 3, 3)
    with pytest.raises(StaError, match="fits the attention windows 1x8x8, 5x3x3, 13x2x2, .* and 30 more"):
        window_from_table(225)
    with pytest.raises(StaError, match=r"the config says window_size \[2, 2, 3\], but a 45-row .* fit 2x3x2"):
        window_from_table(45, reference_index((2, 3, 2)), stated=(2, 2, 3))


@pytest.mark.parametrize("window", [(2, 2, 3), (2, 3, 2), (1, 8, 8)])
def test_the_window_is_read_from_the_index_buffer(tmp_path, clip, window):
    """Windows with unequal sides fit the same table as their permutations ((2, 2, 3) was built as
    (3, 2, 2): logits 0.7 off, exit 0); the buffer says which. (1, 8, 8) is ambiguous without the
    buffer: the artifact, which does not keep it, says it in its config.json and loads again."""
    torch.manual_seed(0)
    truth = VideoSwin(tiny_swin_config(depths=(1, 1, 1, 1), num_frames=8, window_size=window)).eval()
    write_swin(tmp_path / "swin.safetensors", truth)  # with the buffers
    arch = dict(image_size=TINY.image_size, num_frames=8, mean="0.5,0.5,0.5", std="0.2,0.2,0.2")
    model = sta_cli.load(tmp_path / "swin.safetensors", **arch)
    assert model.cfg.window_size == window
    with torch.no_grad():
        torch.testing.assert_close(model(clip), truth(clip), atol=1e-6, rtol=1e-6)
    sta_cli.prune(tmp_path / "swin.safetensors", r1=0, out=tmp_path / "art", **arch)
    assert sta_cli.load(tmp_path / "art").cfg.window_size == window


def test_wrapper_prefixes_and_damaged_torchvision_files(tmp_path):
    """Keys saved from a DDP- or torch.compile-wrapped model ("module.", "_orig_mod.") load as the
    model; a torchvision file without its patch norm or qkv biases (torchvision always has both) is
    refused, not run as another architecture."""
    tv = load_file(FIXTURES / "grid_torchvision.safetensors")
    io = fixture_io("grid")
    save_file({f"module._orig_mod.{k}": v for k, v in tv.items()}, tmp_path / "ddp.safetensors")
    with torch.no_grad():
        logits = sta_cli.load(tmp_path / "ddp.safetensors", **FIXTURE_ARCH)(io["input"])
    torch.testing.assert_close(logits, io["logits"], atol=1e-5, rtol=1e-5)
    save_file({k: v for k, v in tv.items() if not k.startswith("patch_embed.norm")}, tmp_path / "nonorm.safetensors")
    with pytest.raises(StaError, match="a torchvision Video Swin without patch_norm weights"):
        sta_cli.load(tmp_path / "nonorm.safetensors", **FIXTURE_ARCH)
