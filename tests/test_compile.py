"""torch.compile(fullgraph=True): the compiled model keeps the same tokens as eager."""

from __future__ import annotations

import pytest
import torch

import sta_cli
from sta_cli.compiled import compile_model, warm_up
from sta_cli.errors import StaError
from sta_cli.models.videomae import VideoMAE, VideoMAEConfig
from sta_cli.pruning import STAConfig

# 4 temporal slices x 9 tokens: the smallest grid STA runs on, so compiling stays quick.
CFG = VideoMAEConfig(
    embed_dim=32, depth=3, num_heads=2, mlp_dim=64, num_classes=5, image_size=48, patch_size=16, num_frames=8
)


@torch.no_grad()
def test_compiled_keeps_the_same_tokens_as_eager():
    torch.manual_seed(0)
    model = VideoMAE(CFG, STAConfig(r1=3)).eval()  # fbf: forward and backward stages
    clip = torch.randn(2, 3, 8, 48, 48)
    eager = model(clip)
    eager_kept = model.kept_positions
    compiled = compile_model(model)
    seconds = warm_up(compiled, clip, {"pruned": model.sta})  # one setting: compiling dominates the test
    assert seconds["pruned"] > 0
    out = compiled(clip)  # the cached graph
    assert compiled.sta == model.sta and len(compiled.kept_positions) == 3
    assert all(torch.equal(a, b) for a, b in zip(compiled.kept_positions, eager_kept))
    assert torch.allclose(out, eager, atol=1e-5)


@torch.no_grad()
def test_video_swin_compiles_and_keeps_the_same_tokens():
    """Video Swin's window layouts are numpy index tables; compile_model fills them eagerly so that
    torch.compile reads them as constants (tracing their numpy code fails on data-dependent shapes)."""
    from conftest import tiny_swin_config

    from sta_cli.models import videoswin

    torch.manual_seed(0)
    model = videoswin.VideoSwin(tiny_swin_config()).eval()
    model.set_sta(STAConfig(r1=8))
    clip = torch.randn(2, 3, 4, 64, 64)
    eager = model(clip)
    eager_kept = model.kept_positions
    videoswin.window_plan.clear()  # as in a fresh process: nothing built yet
    videoswin.position_code.clear()
    compiled = compile_model(model)
    for mode in (torch.no_grad, torch.inference_mode):  # profile and eval run under inference_mode
        with mode():
            out = compiled(clip)
        assert all(torch.equal(a, b) for a, b in zip(compiled.kept_positions, eager_kept))
        assert torch.allclose(out, eager, atol=1e-5)


def test_random_orders_are_refused_with_a_clear_error():
    model = VideoMAE(CFG, STAConfig(r1=3, first_group="grid")).eval()
    with pytest.raises(StaError, match="--compile: first_group=grid"):
        compile_model(model)
    compiled = compile_model(VideoMAE(CFG, STAConfig(r1=3)).eval())
    with pytest.raises(StaError, match="score=random"):
        warm_up(compiled, torch.randn(1, 3, 8, 48, 48), {"random": STAConfig(r1=3, score="random")})


def test_load_compile_returns_a_compiled_model_with_the_same_interface():
    model = sta_cli.load("demo", r1=4, compile=True)  # compiles lazily: nothing is traced here
    assert isinstance(model, torch._dynamo.eval_frame.OptimizedModule)
    assert model.sta.r1 == 4 and model.tokens_per_stage[0] == model.cfg.num_tokens
    from sta_cli.flops import gflops

    assert gflops(model) == gflops(sta_cli.load("demo", r1=4))  # counted on the model it wraps (raised)


def test_cli_compile_refuses_a_random_order_before_any_work():
    from typer.testing import CliRunner

    from sta_cli.cli import app

    r = CliRunner().invoke(app, ["profile", "--compile", "--first-group", "grid", "--runs", "1"])
    assert r.exit_code == 1
    assert "sta: error: --compile: first_group=grid" in r.stderr and "Traceback" not in r.stderr
