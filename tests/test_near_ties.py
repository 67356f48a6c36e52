"""Export validation tells a swap of near-tied tokens from a real divergence (issue: a ViT-H export
failed because ONNX Runtime ordered two tokens with equal scores the other way)."""

from __future__ import annotations

import pytest
import torch

from sta_cli.errors import ValidationFailed
from sta_cli.formats.graph import ExportModule, output_names
from sta_cli.formats.validate import TIE_TOL, Case, Validation, enforce, validate
from sta_cli.models.videomae import VideoMAE, VideoMAEConfig
from sta_cli.pruning import STAConfig
from sta_cli.pruning import sta as sta_module

CFG = VideoMAEConfig(
    embed_dim=32, depth=6, num_heads=2, mlp_dim=64, num_classes=5, image_size=32, patch_size=8, num_frames=8
)


def tied_model() -> VideoMAE:
    """No positional embedding: identical patches are identical tokens, so their STA scores tie exactly."""
    torch.manual_seed(0)
    model = VideoMAE(CFG, STAConfig(r1=6)).eval()
    model.pos_embed.zero_()
    return model


def duplicated_clip(batch: int = 2) -> torch.Tensor:
    """Every 8x8 patch appears twice per frame (left half = right half) and every tubelet twice."""
    torch.manual_seed(1)
    half = torch.randn(batch, 3, 2, 32, 16)
    frames = torch.cat([half, half], -1)  # (B, 3, 2, 32, 32)
    return frames.repeat(1, 1, 4, 1, 1)  # 4 identical tubelets of 2 frames


def reverse_tie_break(key: torch.Tensor) -> torch.Tensor:
    """Ascending order with ties broken by the HIGHER index: what another correct runtime may do."""
    n = key.shape[-1]
    return (n - 1 - key.flip(-1).sort(dim=-1, stable=True).indices).to(torch.long)


def run_validation(run, model, x, **kw) -> dict:
    reference = lambda t: list(ExportModule(model)(t))  # noqa: E731
    names = output_names(model)
    return validate(run, reference, [Case("duplicated clip", x)], names, names, 1e-4, False, **kw)


def messages(result: Validation, kind: str | None = None) -> list[str]:
    return [c.message for c in result.checks if kind is None or c.kind == kind]


def tied_pair(model, x, stage: int = 0) -> tuple[int, int]:
    """Two places of PyTorch's kept list at `stage` (sample 0) holding different tokens with equal scores."""
    from sta_cli.formats.validate import recording_scores, stage_scores

    with recording_scores() as record:
        kept = ExportModule(model)(x)[1 + stage][0]
    sc = stage_scores(record[stage])
    key = dict(zip(sc.positions[0].tolist(), sc.keys[0].tolist()))
    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            a, b = int(kept[i]), int(kept[j])
            if key[a] == key[b] and (a // sc.group_size) == (b // sc.group_size):  # stage 1: positions are indices
                return i, j
    raise AssertionError("no tied pair")


@torch.no_grad()
def test_one_near_tie_swap_passes_and_is_counted():
    """The ViT-H case: two tokens with equal scores in the other order at stage 1, all else equal."""
    model, x = tied_model(), duplicated_clip()
    out = [t.clone() for t in ExportModule(model)(x)]
    i, j = tied_pair(model, x)
    out[1][0, [i, j]] = out[1][0, [j, i]]
    result = run_validation(lambda t: out, model, x)
    enforce(result, allow_mismatch=False)  # passes, and says what it accepted
    assert messages(result)[5].startswith(
        "kept positions equal up to near ties (stage 1: 0 token(s) swapped in/out, 2 in another order"
    )


@torch.no_grad()
def test_tie_broken_the_other_way_passes_the_kept_positions_rule(monkeypatch):
    """Another correct runtime, breaking every exact tie by the higher index: stage 1 is accepted as
    near-tie swaps, and so is each later stage, judged against PyTorch run on the graph's tokens
    before it (PyTorch's own later stages ranked other tokens)."""
    model, x = tied_model(), duplicated_clip()
    reference = [t.clone() for t in ExportModule(model)(x)]
    with monkeypatch.context() as m:
        m.setattr(sta_module, "stable_argsort", reverse_tie_break)
        other = [t.clone() for t in ExportModule(model)(x)]
    assert not torch.equal(other[1], reference[1])  # the ties really swap
    result = run_validation(lambda t: other, model, x)
    errors = [c.message for c in result.checks if not c.ok and c.kind == "error"]
    assert errors == []
    kept = [m for m in messages(result) if m.startswith("kept positions")]
    assert kept[0].startswith("kept positions equal up to near ties (stage 1: "), kept
    assert "stages after 1 judged on the graph's tokens before them" in kept[0]
    assert messages(result, "warning") == []


@torch.no_grad()
def test_a_different_score_is_not_a_tie():
    model, x = tied_model(), duplicated_clip()
    x = x + 0.3 * torch.randn_like(x)  # break the ties: every difference is now a real one
    wrong = VideoMAE(CFG, STAConfig(r1=6, score="semantic")).eval()
    wrong.load_state_dict(model.state_dict())
    wrong.pos_embed.zero_()
    other = [t.clone() for t in ExportModule(wrong)(x)]
    result = run_validation(lambda t: other, model, x)
    with pytest.raises(ValidationFailed, match="kept positions differ beyond near ties"):
        enforce(result, allow_mismatch=True)


@pytest.mark.parametrize("break_it", ["swap_untied", "shift_group", "foreign_token"])
@torch.no_grad()
def test_broken_gather_fails(break_it):
    model = tied_model()
    x = duplicated_clip() + 0.3 * torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    out = [t.clone() for t in ExportModule(model)(x)]
    kept = out[2]  # stage 2
    if break_it == "swap_untied":  # two tokens of one group, distinct scores, in each other's place
        kept[0, [4, 5]] = kept[0, [5, 4]]
    elif break_it == "shift_group":  # the groups' tokens rotated: another group's token in each place
        out[2] = kept.roll(1, -1)
    else:  # a token that did not survive stage 1
        dropped = sorted(set(range(CFG.num_tokens)) - set(out[1][0].tolist()))[0]
        kept[0, 3] = dropped
    result = run_validation(lambda t: out, model, x)
    with pytest.raises(ValidationFailed, match="kept positions differ beyond near ties .*stage 2, sample 1"):
        enforce(result, allow_mismatch=True)


@torch.no_grad()
def test_tolerance_decides():
    """Swap the two closest-scored (not equal) kept tokens of a group: a near tie just inside the
    tolerance, a divergence just outside it."""
    from sta_cli.formats.validate import forcing_kept, recording_scores, stage_scores

    model = tied_model()
    x = duplicated_clip() + 0.3 * torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    with recording_scores() as record:
        out = [t.clone() for t in ExportModule(model)(x)]
    sc = stage_scores(record[0])
    keys, n = sc.keys[0], sc.group_size
    kept = out[1][0]
    best = None
    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            a, b = int(kept[i]), int(kept[j])
            gap = abs(float(keys[a] - keys[b]))
            if a // n == b // n and gap == gap and (best is None or gap < best[0]):
                best = (gap, i, j, a // n)
    gap, i, j, g = best
    scale = float(keys[g * n : (g + 1) * n].nan_to_num(0).abs().max())
    out[1][0, [i, j]] = out[1][0, [j, i]]
    with forcing_kept([out[1]]):  # a consistent graph: its later stages follow its stage-1 order
        out = [t.clone() for t in ExportModule(model)(x)]
    assert gap > 0
    enforce(run_validation(lambda t: out, model, x, tie_tol=1.01 * gap / scale), allow_mismatch=True)
    with pytest.raises(ValidationFailed, match="not a near tie|beyond near ties"):
        enforce(run_validation(lambda t: out, model, x, tie_tol=0.99 * gap / scale), allow_mismatch=True)
    assert run_validation(lambda t: out, model, x).tie_tol == TIE_TOL["float32"]


def test_set_swap_at_the_boundary_sorted_output():
    """Video Swin reports kept positions sorted: a near tie at the keep boundary is a token swapped
    in for another. Two groups of 6 tokens, 4 kept each; token 3 and token 4 tie in group 1."""
    from sta_cli.formats.validate import StageScores, near_tie_check

    keys = torch.tensor([[0.1, 0.5, 0.2, 0.60, 0.60 + 1e-7, 0.9, 0.3, 0.1, 0.8, 0.2, 0.4, 0.7]], dtype=torch.float64)
    scores = [StageScores(torch.arange(12)[None], keys, 6)]
    ref = torch.tensor([[0, 1, 2, 3, 6, 7, 9, 10]])
    tied = torch.tensor([[0, 1, 2, 4, 6, 7, 9, 10]])  # 4 instead of 3: equal to 1e-7
    (check,) = near_tie_check([tied], [ref], scores, TIE_TOL["float32"])
    assert check.ok and "up to near ties (stage 1: 1 token(s) swapped in/out, 0 in another order;" in check.message
    wrong = torch.tensor([[0, 1, 2, 5, 6, 7, 9, 10]])  # 5 (0.9) instead of 3 (0.6)
    (check,) = near_tie_check([wrong], [ref], scores, TIE_TOL["float32"])
    assert not check.ok and "group 1: kept token 5 (score 0.9) and dropped token 3 (score 0.6)" in check.message
    moved = torch.tensor([[0, 1, 2, 6, 3, 7, 9, 10]])  # a group-2 token in group 1's place
    (check,) = near_tie_check([moved], [ref], scores, TIE_TOL["float32"])
    assert not check.ok and "a different number of tokens kept per group" in check.message


def test_stages_after_a_near_tie_are_judged_on_the_graphs_tokens():
    """A near-tie reordering at stage 1 carries forward; stage 2 is judged against PyTorch run on the
    graph's stage-1 tokens (`rerun`). A stage-2 choice that differs from that run beyond a tie, or a
    token kept twice, fails (both passed: stages after a near tie were not judged)."""
    from sta_cli.formats.validate import StageScores, near_tie_check

    keys = torch.tensor([[0.1, 0.2, 0.2 + 1e-8, 0.9, 0.3, 0.1, 0.8, 0.4]], dtype=torch.float64)
    ref = [torch.tensor([[0, 1, 2, 5, 4, 7]]), torch.tensor([[0, 1, 2, 5]])]
    scores = [StageScores(torch.arange(8)[None], keys, 4), StageScores(ref[0], keys[:, :6], 6)]
    ours = [torch.tensor([[0, 2, 1, 5, 4, 7]]), torch.tensor([[0, 2, 1, 5]])]  # 1 and 2 tie: order swapped
    on_ours = StageScores(ours[0], torch.tensor([[0.1, 0.2, 0.2 + 1e-8, 0.1, 0.3, 0.4]], dtype=torch.float64), 6)
    rerun = lambda kept: ([None, kept[0], torch.tensor([[0, 2, 1, 5]])], [on_ours])  # noqa: E731
    (check,) = near_tie_check(ours, ref, scores, TIE_TOL["float32"], rerun)
    assert check.ok and "stage 1: 0 token(s) swapped in/out, 2 in another order" in check.message
    ours[1] = torch.tensor([[0, 2, 1, 4]])  # token 4 (0.3) kept where PyTorch keeps 5 (0.1)
    (check,) = near_tie_check(ours, ref, scores, TIE_TOL["float32"], rerun)
    assert not check.ok and "stage 2, sample 1, group 1: kept token 4 (score 0.3) and dropped token 5" in check.message
    ours[1] = torch.tensor([[0, 2, 1, 1]])
    (check,) = near_tie_check(ours, ref, scores, TIE_TOL["float32"], rerun)
    assert not check.ok and "a token kept twice" in check.message
    (check,) = near_tie_check(ours, ref, scores, TIE_TOL["float32"])  # nothing to re-run PyTorch with
    assert not check.ok and "kept positions differ after stage 1: not judged" in check.message
