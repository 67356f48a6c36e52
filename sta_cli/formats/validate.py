"""Compare an exported model with PyTorch, Optimum-style, and decide whether the export stands.

Three kinds of failure:
  error     wrong output names or shapes, kept tokens that differ beyond near ties, a graph that
            breaks the contract (forbidden ops, non-static token counts): the export is wrong,
            always fatal.
  mismatch  logits beyond atol, different top-1: fatal unless --allow-mismatch.
  warning   reported only (e.g. a graph's own notes).

Kept positions. Two correct implementations may order two tokens whose scores are equal to float
precision either way (and a reduced-precision graph moves the scores a little more), so a
difference is accepted when PyTorch's own scores show it is a near tie: in every group the graph
kept tokens that are the lowest-scored within a tolerance of the group's score scale, in PyTorch's
order up to tied neighbours. A wrong k, a broken gather or a different score is not a near tie and
fails. The scores come from the reference run (`pruning.sta.score_record`); after a near tie, a
later stage is judged against PyTorch run on the graph's tokens up to it; see `near_tie_check`.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from ..errors import ValidationFailed
from ..log import Log, quiet

OK, FAIL, WARN = "✓", "✗", "!"
# Near-tie tolerance per graph precision, relative to the largest score in the group: how far the
# graph's arithmetic may move PyTorch's float32 STA scores. Measured on the packaged demo (r1=21,
# 256 held-out clips, ONNX Runtime), the tolerance each clip needed to pass: float32 graph 0 (61 of
# 64 clips identical) or 1e-6; fp16 at most 1e-2 (median 1e-4); int8 at most 3e-2 (median 1e-2).
# Each default leaves a margin of 3x or more; a wrong score or gather needs O(1).
TIE_TOL = {"float32": 1e-4, "float16": 3e-2, "int8": 1e-1}


def release_memory() -> None:
    """Collect garbage and hand the C heap's free memory back to the OS (glibc's malloc_trim).

    PyTorch and ONNX Runtime free a run's activations into the C heap, which keeps them: the next
    run of the other (or a session being built) then adds its peak on top. Trimming between runs
    keeps the peaks apart (Video Swin-T export validation: 3.52 -> 2.89 GB). A no-op elsewhere."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim with
            pass


@dataclass
class Check:
    message: str
    ok: bool
    kind: str = "error"  # error | mismatch | warning
    case: str | None = None


@dataclass
class Validation:
    """What `validate` found: the tolerances, the largest logit difference and every check."""

    atol: float
    tie_tol: float
    max_abs_diff: float | None  # None: no case ran
    cases: list[str]
    checks: list[Check]
    ok: bool | None = None  # set by `enforce`


@dataclass
class SkippedValidation:
    """--no-validate: no case ran, only the checks that need no run (the ONNX graph's)."""

    atol: float
    max_abs_diff: None = None
    cases: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    skipped: bool = True
    ok: bool | None = None  # set by `enforce`


class Checked(Protocol):
    """A validation result `enforce` and `format_block` read (this module's, or formats.quantize's)."""

    checks: list[Check]
    ok: bool | None


@dataclass
class Case:
    label: str
    x: torch.Tensor


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def compare_case(
    case: Case,
    names: list[str],
    ours: list[torch.Tensor],
    ref: list[torch.Tensor],
    atol: float,
    scores: list[StageScores],
    tie_tol: float,
    rerun: Rerun | None = None,
) -> tuple[list[Check], float]:
    """Checks of one case. Where the graph kept other tokens than PyTorch, and only by near ties,
    `rerun(kept)` runs PyTorch on the graph's kept tokens: their logits are held to `atol`."""
    checks = []
    for name, o, r in zip(names, ours, ref):
        same = tuple(o.shape) == tuple(r.shape)
        checks.append(
            Check(
                f"{name}: {tuple(o.shape)} {'matches' if same else 'does not match'} {tuple(r.shape)}",
                same,
                "error",
                case.label,
            )
        )
    if not all(c.ok for c in checks):
        return checks, float("nan")
    kept_o, kept_r = [o.long().cpu() for o in ours[1:]], [r.long().cpu() for r in ref[1:]]
    logits_r, note = ref[0], ""
    if kept_o:
        kept = [replace(c, case=case.label) for c in near_tie_check(kept_o, kept_r, scores, tie_tol, rerun)]
        checks += kept
        differ = not all(torch.equal(o, r) for o, r in zip(kept_o, kept_r))
        forced = (
            rerun(kept_o) if differ and rerun is not None and all(c.ok for c in kept if c.kind == "error") else None
        )
        if forced is not None:
            logits_r, note = forced[0][0], "; PyTorch run on the graph's kept tokens"
    return checks + logit_checks(case, ours[0], logits_r, atol, note), _max_abs(ours[0].cpu(), logits_r.cpu())


def logit_checks(case: Case, logits_o: torch.Tensor, logits_r: torch.Tensor, atol: float, note: str) -> list[Check]:
    same_top1 = torch.equal(logits_o.float().argmax(-1).cpu(), logits_r.float().argmax(-1).cpu())
    diff = _max_abs(logits_o.cpu(), logits_r.cpu())
    close = diff <= atol
    return [
        Check(f"top-1 {'identical' if same_top1 else 'differs'}{note}", same_top1, "mismatch", case.label),
        Check(
            f"{'all values close' if close else 'values not close'} (atol: {atol:g}, max abs diff: {diff:.3g}{note})",
            close,
            "mismatch",
            case.label,
        ),
    ]


@contextmanager
def forcing_kept(kept: list[torch.Tensor]):
    """Inside: every STA stage keeps the given token positions ((B, K) per stage, in order)."""
    from ..pruning import sta

    previous, sta.forced_kept = sta.forced_kept, list(kept)
    try:
        yield
    finally:
        sta.forced_kept = previous


def _set_overlap(o: torch.Tensor, r: torch.Tensor) -> float:
    """Fraction of the reference's kept tokens the exported model also kept (order ignored)."""
    o, r = o.long().cpu(), r.long().cpu()
    return (r[:, :, None] == o[:, None, :]).any(-1).float().mean().item()


# --- near ties --------------------------------------------------------------------------------


@dataclass
class StageScores:
    """What PyTorch ranked one stage's tokens by: lower keys are kept (and come) first."""

    positions: torch.Tensor  # (B, N) each token entering the stage, as kept_positions numbers it
    keys: torch.Tensor  # (B, N) float64; NaN where the rank is structural, never a float tie
    group_size: int


@contextmanager
def recording_scores():
    """Collect, for every STA stage the model runs inside the block, the scores it ranked by."""
    from ..pruning import sta

    record: list[dict] = []
    previous, sta.score_record = sta.score_record, record
    try:
        yield record
    finally:
        sta.score_record = previous


def stage_scores(entry: dict) -> StageScores:
    """Per-token ranking keys of one stage, from what `stage_keep_indices` recorded."""
    positions, metric = entry["positions"].cpu(), entry["metric"].float()  # (B, N), (B, n, c) L2-normalised
    B, N = positions.shape
    n = metric.shape[1]
    keys = torch.full((B, N // n, n), float("nan"), dtype=torch.float64)
    for g, score in entry["scores"].items():
        keys[:, g] = score.double().cpu()
    if entry["cfg"].first_group == "tome":
        # bipartite_drop_order ranks the A side (even positions) by its best cosine to the B side,
        # which is always kept (NaN). random/grid draws are constants: no float tie there either.
        best = (metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)).amax(-1)
        keys[:, entry["first"], ::2] = best.double().cpu()
    return StageScores(positions, keys.flatten(1), n)


@dataclass
class StageVerdict:
    swapped: int = 0  # tokens one side kept and the other dropped (pairs)
    reordered: int = 0  # places where the two orders of commonly kept tokens differ
    problem: str = ""  # not a near tie: what differs


def _where(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Index into `positions` (N,) of each of `values` (K,); -1 where absent."""
    hit = values[:, None] == positions[None, :]
    return torch.where(hit.any(1), hit.long().argmax(1), -1)


def _group_problem(
    io: torch.Tensor, ir: torch.Tensor, keys: torch.Tensor, members: torch.Tensor, tol: float, pos: torch.Tensor
) -> tuple[str, int, int]:
    """Judge one group: io / ir the graph's / PyTorch's kept tokens (indices into the stage's
    tokens, in output order), members all the group's tokens. -> (problem, swapped, reordered)."""
    kept = torch.isin(members, io)
    structural = keys[members].isnan()
    if not torch.equal(kept & structural, torch.isin(members, ir) & structural):
        return "a token whose place is fixed by the algorithm (not by a score) was swapped", 0, 0
    swapped = int((~torch.isin(io, ir)).sum())
    if swapped:
        k_in, k_out = keys[members[kept & ~structural]], keys[members[~kept & ~structural]]
        if k_in.numel() and k_out.numel() and k_in.max() > k_out.min() + tol:
            a, b = members[kept & ~structural][k_in.argmax()], members[~kept & ~structural][k_out.argmin()]
            return (
                (
                    f"kept token {int(pos[a])} (score {float(keys[a]):.6g}) and dropped token {int(pos[b])} "
                    f"(score {float(keys[b]):.6g})"
                ),
                0,
                0,
            )
    co, cr = io[torch.isin(io, ir)], ir[torch.isin(ir, io)]
    diff = (co != cr).nonzero().flatten()
    gaps = (keys[co[diff]] - keys[cr[diff]]).abs()
    if diff.numel() and not bool((gaps <= tol).all()):  # NaN gaps (structural places) fail too
        i = int(diff[(~(gaps <= tol)).nonzero()[0]])
        return (
            (
                f"token {int(pos[co[i]])} (score {float(keys[co[i]]):.6g}) is where PyTorch has token "
                f"{int(pos[cr[i]])} (score {float(keys[cr[i]]):.6g})"
            ),
            0,
            0,
        )
    return "", swapped, int(diff.numel())


def judge_stage(ours: torch.Tensor, ref: torch.Tensor, sc: StageScores, b: int, tie_tol: float) -> StageVerdict:
    """Is the graph's kept list (K,) for sample b PyTorch's (K,) up to near-tied scores?"""
    pos, keys, n = sc.positions[b], sc.keys[b], sc.group_size
    if ours.unique().numel() != ours.numel():
        return StageVerdict(problem="a token kept twice")
    io, ir = _where(ours, pos), _where(ref, pos)
    if (io < 0).any():
        return StageVerdict(problem=f"kept token {int(ours[io < 0][0])}, which did not enter the stage")
    if not torch.equal(io // n, ir // n):
        return StageVerdict(problem="a different number of tokens kept per group, or in another order of groups")
    verdict = StageVerdict()
    for g in (ir // n).unique().tolist():
        members = torch.arange(g * n, (g + 1) * n)
        valid = keys[members][~keys[members].isnan()]
        tol = tie_tol * float(valid.abs().max()) if valid.numel() else 0.0
        problem, swapped, reordered = _group_problem(io[io // n == g], ir[ir // n == g], keys, members, tol, pos)
        if problem:
            return StageVerdict(problem=f"group {g + 1}: {problem}")
        verdict.swapped += swapped
        verdict.reordered += reordered
    return verdict


def near_tie_check(
    kept_o: list[torch.Tensor],
    kept_r: list[torch.Tensor],
    scores: list[StageScores],
    tie_tol: float,
    rerun: Rerun | None = None,
) -> list[Check]:
    """Checks for the kept positions of one case: identical, equal up to near ties, or different.

    After the first stage that differs, the graph ranked other tokens than PyTorch did (or the same
    in another order), so PyTorch's own run cannot judge the stages after it: each later stage s is
    judged against PyTorch run on the graph's kept tokens at the stages before s (`rerun(prefix)`),
    ranking stage s itself. Without `rerun`, those stages are reported as not judged (a failure)."""
    tokens = "/".join(str(k.shape[1]) for k in kept_o)
    if all(torch.equal(o, r) for o, r in zip(kept_o, kept_r)):
        return [Check(f"kept positions identical ({len(kept_o)} stages, {tokens} tokens)", True)]
    if len(scores) != len(kept_o):
        return [
            Check(f"kept positions differ ({_overlaps(kept_o, kept_r)}; no PyTorch scores to judge near ties)", False)
        ]
    first = next(s for s, (o, r) in enumerate(zip(kept_o, kept_r)) if not torch.equal(o, r))
    swapped, reordered = [0] * len(kept_o), [0] * len(kept_o)
    for s in range(first, len(kept_o)):
        if s > first and rerun is None:
            return [
                Check(f"kept positions differ after stage {first + 1}: not judged ({_overlaps(kept_o, kept_r)})", False)
            ]
        ref, sc = (kept_r[s], scores[s]) if s == first else _rerun_stage(rerun, kept_o, s)
        for b in range(kept_o[s].shape[0]):
            if torch.equal(kept_o[s][b], ref[b]):
                continue
            v = judge_stage(kept_o[s][b], ref[b], sc, b, tie_tol)
            if v.problem:
                upstream = f"; PyTorch on the graph's tokens of stages 1-{s}" if s > first else ""
                return [
                    Check(
                        f"kept positions differ beyond near ties (stage {s + 1}, sample {b + 1}, {v.problem}; "
                        f"tie tolerance {tie_tol:g} of the group's largest score{upstream}; {_overlaps(kept_o, kept_r)})",
                        False,
                    )
                ]
            swapped[s], reordered[s] = swapped[s] + v.swapped, reordered[s] + v.reordered
    detail = ", ".join(
        f"stage {s + 1}: {w} token(s) swapped in/out, {q} in another order"
        for s, (w, q) in enumerate(zip(swapped, reordered))
        if w or q
    )
    after = f"; stages after {first + 1} judged on the graph's tokens before them" if first + 1 < len(kept_o) else ""
    return [
        Check(
            f"kept positions equal up to near ties ({detail or 'the order carried forward'}; scores within "
            f"{tie_tol:g} of the group's largest{after})",
            True,
        )
    ]


def _rerun_stage(rerun: Rerun, kept_o: list[torch.Tensor], s: int) -> tuple[torch.Tensor, StageScores]:
    """PyTorch's kept positions at stage s and the scores it ranked them by, its stages before s
    keeping the graph's tokens."""
    outputs, free_scores = rerun(kept_o[:s])
    return outputs[1 + s].long().cpu(), free_scores[0]


def _overlaps(kept_o: list[torch.Tensor], kept_r: list[torch.Tensor]) -> str:
    return ", ".join(
        f"stage {s + 1}: {100 * (o == r).float().mean().item():.1f}% same position, {100 * _set_overlap(o, r):.1f}% same set"
        for s, (o, r) in enumerate(zip(kept_o, kept_r))
    )


@torch.no_grad()
def validate(
    run: Callable[[torch.Tensor], list[torch.Tensor]],
    reference: Callable[[torch.Tensor], list[torch.Tensor]],
    cases: list[Case],
    names: list[str],
    actual_names: list[str] | None,
    atol: float,
    fp16: bool,
    extra: list[Check] | None = None,
    tie_tol: float | None = None,
    log: Log = quiet,
) -> Validation:
    """Run every case through both models and collect the checks. Raises nothing (see `enforce`).

    `reference` is the eager PyTorch model: its STA scores are recorded to judge near ties
    (tie_tol, relative to each group's largest score; default by precision, TIE_TOL). Each run is
    a step on `log` (a large model takes tens of seconds per run)."""
    tie_tol = tie_tol if tie_tol is not None else TIE_TOL["float16" if fp16 else "float32"]
    checks = list(extra or [])
    if actual_names is not None:  # ONNX declares names; a TorchScript program returns a tuple
        names_ok = list(actual_names) == list(names)
        checks.append(Check(f"output names match reference model ({', '.join(actual_names)})", names_ok, "error"))
        if not names_ok:
            cases = []
    diffs = []
    release_memory()  # what building the session (and the export before it) left in the heap
    for case in cases:
        log(f"validating on {case.label}: the exported model")
        ours = run(case.x)
        release_memory()
        if len(ours) != len(names):
            checks.append(
                Check(
                    f"returns {len(ours)} outputs, expected {len(names)} ({', '.join(names)})",
                    False,
                    "error",
                    case.label,
                )
            )
            break
        log(f"validating on {case.label}: the PyTorch reference")
        with recording_scores() as record:
            ref = reference(case.x)
        release_memory()
        scores = [stage_scores(e) for e in record]
        rerun = forced_reference(reference, case, log)
        case_checks, diff = compare_case(case, names, ours, ref, atol, scores, tie_tol, rerun)
        checks.extend(case_checks)
        diffs.append(diff)
    return Validation(atol, tie_tol, max(diffs) if diffs else None, [c.label for c in cases], checks)


class Rerun(Protocol):
    def __call__(self, kept: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[StageScores]]: ...


def forced_reference(reference: Callable[[torch.Tensor], list[torch.Tensor]], case: Case, log: Log) -> Rerun:
    """`rerun(kept)`: PyTorch on `case` keeping the graph's tokens at the first len(kept) stages
    (all of them: logits comparable with the graph's), the later ones ranking their own; returns its
    outputs and the scores its free stages ranked by."""

    def rerun(kept: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[StageScores]]:
        log(f"validating on {case.label}: the PyTorch reference on the graph's kept tokens of {len(kept)} stage(s)")
        with forcing_kept(kept), recording_scores() as record:
            out = reference(case.x)
        release_memory()
        return out, [stage_scores(e) for e in record]

    return rerun


def failures(result: Checked, allow_mismatch: bool) -> list[Check]:
    fatal = {"error"} if allow_mismatch else {"error", "mismatch"}
    return [c for c in result.checks if not c.ok and c.kind in fatal]


def enforce(result: Checked, allow_mismatch: bool) -> None:
    """Set result.ok; ValidationFailed on the first fatal check (the caller's atomic output then disappears)."""
    bad = failures(result, allow_mismatch)
    result.ok = not bad
    if bad:
        first = bad[0]
        where = f" on {first.case}" if first.case else ""
        hint = " (pass --allow-mismatch to keep it anyway)" if all(c.kind == "mismatch" for c in bad) else ""
        raise ValidationFailed(f"validation failed{where}: {first.message}{hint}")


def format_block(result: Checked, title: str) -> list[str]:
    """Optimum-style lines: a title, then `-[✓] ...` per check, grouped by case."""
    lines = [title]
    current = object()
    for c in result.checks:
        if c.case != current:
            current = c.case
            if current is not None:
                lines.append(f"\t- Validating on {current}")
        mark = OK if c.ok else (WARN if c.kind == "warning" else FAIL)
        indent = "\t\t" if c.case else "\t"
        lines.append(f"{indent}-[{mark}] {c.message}")
    return lines
