"""STA token selection as small pure tensor functions (paper Sec. 3.2, Alg. 1; docs/algorithm.md).

Nothing here knows about models: the backbone hands over a stage's tokens, a similarity feature
and the stage plan, and gets back the indices of the tokens to keep. Every shape is static (top-k
with a constant k, gather, matmul, softmax), so the same code runs batched and exports to ONNX.

Notation: B batch, N tokens entering the stage, G groups (consecutive runs of N // G tokens,
one or more temporal slices), n = N // G tokens per group, r dropped per group, c feature size.
Scores are computed in float32 whatever the model's dtype: fp16 would change which tokens win.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes

from .config import STAConfig, Stage

# Off (None) unless export validation sets a list: each stage then appends what it ranked tokens by,
# so a swap of near-tied tokens in an exported graph can be told from a real divergence.
score_record: list | None = None
# Off (None) unless export validation sets a list (one (B, K) tensor of token positions per stage):
# each stage then keeps those tokens instead of ranking its own, so PyTorch can run on the tokens a
# graph kept after breaking a near tie the other way, and its logits can be held to the tolerance.
forced_kept: list | None = None


def single_threaded(fn):
    """Run a scoring function with one intra-op CPU thread in eager mode.

    Scoring works on a few thousand numbers per op (group-sized softmaxes, sorts, matmuls), and
    several of these ops still open a parallel region when torch has 2+ threads: the fork/join
    costs more than the work, and on a busy machine an op waits for a descheduled thread (on the
    demo model, 2 threads made scoring ~2x slower than 1). Every op computes each output element
    on one thread either way, so the results are the same bits. Compiled and traced graphs are
    left alone (the compiler schedules them).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return fn(*args, **kwargs)
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def semantic_weight(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Activation map |x|.sum(-1), min-max normalised within each group (Eq. 4). (B, N, d) -> (B, G, n)."""
    a = x.float().abs().sum(-1).unflatten(1, (groups, -1))
    lo, hi = a.aminmax(dim=-1, keepdim=True)  # one pass for both
    return (a - lo) / (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)


def bipartite_drop_order(metric: torch.Tensor) -> torch.Tensor:
    """ToMe-style ordering of one group for dropping instead of merging. (B, n, c) -> (B, n).

    Even positions are candidates (set A), odd positions the targets (set B). The result lists all
    of B in order, then A by ascending best-match cosine to B: dropping the last r removes the
    A tokens that B already covers best.
    """
    n = metric.shape[1]
    a, b = metric[:, ::2], metric[:, 1::2]
    best = torch.bmm(a, b.transpose(-1, -2)).amax(-1)  # (B, ceil(n/2))
    odds = torch.arange(1, n, 2, device=metric.device)
    a_sorted = 2 * stable_argsort(best)  # A's i-th token is token 2i of the group
    return torch.cat([odds.expand(a_sorted.shape[0], -1), a_sorted], 1)


def stable_argsort(key: torch.Tensor) -> torch.Tensor:
    """Ascending order along the last axis, ties broken by the lower index.

    torch's topk/argsort leave the order of ties unspecified; ONNX TopK specifies exactly this
    rule, so a stable sort makes exported graphs keep the same tokens as PyTorch even on tied
    scores (identical tokens, fp16 rounding). On tie-free inputs it is the plain ascending order.
    """
    return key.sort(dim=-1, stable=True).indices


def drop_last_order(drop_key: torch.Tensor, r: int) -> torch.Tensor:
    """Order a group so that the r tokens with the smallest `drop_key` come last, the rest in place. (B, n) -> (B, n)."""
    n = drop_key.shape[-1]
    lowest = stable_argsort(drop_key)[:, :r]  # (B, r)
    # Membership by comparison rather than scatter: Scatter* does not export cleanly (TensorRT).
    token = torch.arange(n, device=drop_key.device)
    dropped = (lowest[:, :, None] == token).any(1).long()  # (B, n)
    return stable_argsort(dropped * n + token)


def grid_drop_key(uniform: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Random key that ranks one random token of every spatial cell first (the paper's grid prune).

    uniform (B, n) in [0, 1), cells (B, n) cell id per token. The token with the smallest draw in
    its cell gets its draw as key, every other token its draw + 1.
    """
    same_cell = cells[:, :, None] == cells[:, None, :]  # (B, n, n)
    cell_min = torch.where(same_cell, uniform[:, None, :], torch.ones_like(uniform)[:, None, :]).amin(-1)
    return uniform + (uniform > cell_min).to(uniform.dtype)


def visit_affinities(metric: torch.Tensor, visit: list[int]) -> tuple[torch.Tensor, ...]:
    """Cosine affinity of every visited group with the group visited before it, in one batched
    matmul. (B, G, n, c) L2-normalised -> G - 1 tensors (B, n, n): [i][b, j, l] = <token j of
    group visit[i + 1], token l of group visit[i]>.

    The Markov chain needs each group against the previous group's KEPT tokens only; those are
    columns of this matrix (gathered in `accumulate`). Every entry is the same dot product a
    per-group product with the gathered tokens computes (same kernel, same length-c reduction),
    so the chain's scores are unchanged, and G - 1 small matmuls become one.
    """
    ordered = metric.flip(1) if visit[0] else metric  # visiting order: backward stages start at G - 1
    return torch.matmul(ordered[:, 1:], ordered[:, :-1].transpose(-1, -2)).unbind(1)


def accumulate(affinity: torch.Tensor, prev_kept: torch.Tensor | None, prev_score: torch.Tensor | None) -> torch.Tensor:
    """Markov step of the temporal accumulation (Eq. 3). -> (B, n) accumulated redundancy.

    affinity (B, n, n) against all of the previous group's tokens (`visit_affinities`), prev_kept
    (B, p) the ones it kept, in its order, and prev_score (B, p) their scores, summing to 1 per
    sample; both None for the reference's second group, where the score is a column of ones over
    ALL of the first group's tokens. The transition softmax runs over the CURRENT group's tokens.
    """
    if prev_kept is None:
        return affinity.softmax(dim=1).sum(-1)
    B, n, _ = affinity.shape
    transition = affinity.gather(2, prev_kept[:, None, :].expand(B, n, -1)).softmax(dim=1)  # (B, n, p)
    return torch.bmm(transition, prev_score[..., None]).squeeze(-1)


def group_scores(cfg: STAConfig, x: torch.Tensor, groups: int, stage_index: int) -> Callable:
    """What a group's tokens are ranked by: score(group, redundancy (B, n)) -> (B, n), lowest kept.
    Eq. 5 for `sta`; one of its factors, or a fixed random draw, for the ablations."""
    if cfg.score == "temporal":
        return lambda g, redundancy: redundancy
    if cfg.score == "random":  # a fixed draw per (seed, stage, group)
        B, N, _ = x.shape
        return lambda g, redundancy: random_uniform(
            N // groups, cfg.seed, 100 * (stage_index + 1) + g, x.device
        ).expand(B, -1)
    keep_weight = (1 - semantic_weight(x, groups)).unbind(1)  # Eq. 5's semantic factor, all groups in one op
    if cfg.score == "semantic":
        return lambda g, redundancy: keep_weight[g]
    return lambda g, redundancy: redundancy * keep_weight[g]  # Eq. 5


def keep_lowest(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` lowest scores, ascending (ties: lower index first). (B, n) -> (B, keep)."""
    return stable_argsort(score)[:, :keep]


@single_threaded
def similarity_feature(kind: str, x: torch.Tensor, qkv: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The feature f behind token affinities: attention q/k/v averaged over heads, or the block output."""
    if kind == "feature":
        return x
    q, k, v = qkv  # each (B, heads, N, head_dim)
    return {"query": q, "key": k, "value": v}[kind].mean(1)


def random_uniform(n: int, seed: int, stage: int, device) -> torch.Tensor:
    """A fixed draw per (seed, stage): deterministic, identical for every sample, constant when traced."""
    return _uniform_draw(n, seed, stage).to(device)


@functools.lru_cache(maxsize=1024)
def _uniform_draw(n: int, seed: int, stage: int) -> torch.Tensor:
    # Drawn for real even inside torch.export's fake-tensor tracing (a Generator cannot be
    # exported), and cached, so traced graphs hold the draw as a constant. Callers never modify it.
    with _disable_current_modes():
        gen = torch.Generator().manual_seed(seed * 1009 + stage)
        return torch.rand(n, generator=gen, device="cpu")


def first_group_order(
    metric: torch.Tensor, positions: torch.Tensor, r: int, cfg: STAConfig, stage_index: int, grid_hw: tuple[int, int]
) -> torch.Tensor:
    """Order of the first visited group's tokens, kept ones first. (B, n, c), (B, n) -> (B, n)."""
    if cfg.first_group == "tome":
        return bipartite_drop_order(metric)
    B, n = positions.shape
    uniform = random_uniform(n, cfg.seed, stage_index, metric.device).expand(B, n)
    if cfg.first_group == "random":
        return drop_last_order(uniform, r)
    h, w = grid_hw
    side = math.ceil(math.sqrt(r))  # side x side cells >= r: one token from r of them
    y, x = (positions % (h * w)).div(w, rounding_mode="floor"), positions % w
    cells = (y * side).div(h, rounding_mode="floor") * side + (x * side).div(w, rounding_mode="floor")
    return drop_last_order(grid_drop_key(uniform, cells), r)


@single_threaded
def stage_keep_indices(
    x: torch.Tensor,
    metric: torch.Tensor,
    positions: torch.Tensor,
    stage: Stage,
    cfg: STAConfig,
    stage_index: int,
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    """Indices of the tokens one STA stage keeps, groups in temporal order. -> (B, N - G * r).

    x (B, N, d) block output; metric (B, N, c) similarity feature; positions (B, N) original token
    index of each token (for the grid ablation). Within a group, kept tokens come in the order the
    reference produces (first group: bipartite order; others: ascending score), which later stages'
    even/odd split depends on.
    """
    if forced_kept:
        return indices_of(forced_kept.pop(0).to(x.device), positions)
    B, N, _ = x.shape
    G, r = stage.groups, stage.drop
    n, keep = N // G, N // G - r
    metric = F.normalize(metric.float(), dim=-1).unflatten(1, (G, n))  # (B, G, n, c)
    positions = positions.unflatten(1, (G, n))
    visit = list(range(G - 1, -1, -1)) if stage.backward else list(range(G))
    first = visit[0]
    order = first_group_order(metric[:, first], positions[:, first], r, cfg, stage_index, grid_hw)
    kept = {first: order[:, :keep]}  # group -> (B, keep) indices within the group
    score_of, scores = group_scores(cfg, x, G, stage_index), {}
    prev_kept, prev_score = None, None  # the second group sees all n first-group tokens
    for g, affinity in zip(visit[1:], visit_affinities(metric, visit) if G > 1 else ()):
        redundancy = accumulate(affinity, prev_kept, prev_score)  # (B, n)
        scores[g] = score_of(g, redundancy)
        kept[g] = prev_kept = keep_lowest(scores[g], keep)
        prev_score = redundancy.gather(1, prev_kept)
        prev_score = prev_score / prev_score.sum(-1, keepdim=True)
    if score_record is not None:
        score_record.append(
            dict(
                stage=stage_index,
                positions=positions.flatten(1),
                metric=metric[:, first],
                first=first,
                scores=scores,
                cfg=cfg,
            )
        )
    offsets = torch.arange(0, N, n, device=x.device)[:, None]  # (G, 1): group g starts at g * n
    return (torch.stack([kept[g] for g in range(G)], 1) + offsets).flatten(1)


def indices_of(wanted: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Index of each of `wanted` (B, K) among `positions` (B, N), all present. -> (B, K)."""
    B, N = positions.shape
    where = torch.zeros(B, int(positions.max()) + 1, dtype=torch.long, device=positions.device)
    where.scatter_(1, positions, torch.arange(N, device=positions.device).expand(B, N))
    return where.gather(1, wanted)


def gather_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[b, idx[b]] for (B, N, ...) and (B, K) -> (B, K, ...).

    Rows are copied whole by index_select over the flattened batch: several times faster than an
    element-wise gather with an expanded index, in eager and in ONNX Runtime (Gather, not
    GatherElements). The values are the same copies either way.
    """
    if t.dim() == 2:
        return t.gather(1, idx)
    N = t.shape[1]
    # Row b * N + idx[b, k]. The offsets come from a cumulative sum, not arange(B): an ONNX Range
    # over the dynamic batch would leave shapes that shape inference cannot resolve statically.
    offsets = (torch.ones_like(idx[:, :1]).cumsum(0) - 1) * N  # (B, 1): 0, N, 2N, ...
    return t.flatten(0, 1).index_select(0, (idx + offsets).flatten()).unflatten(0, idx.shape)
