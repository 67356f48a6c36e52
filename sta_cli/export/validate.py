"""Compare an exported model with PyTorch, Optimum-style, and decide whether the export stands.

Three kinds of failure:
  error     wrong output names or shapes, different kept tokens (fp32), a graph that breaks the
            contract (forbidden ops, non-static token counts): the export is wrong, always fatal.
  mismatch  logits beyond atol, different top-1: fatal unless --allow-mismatch.
  warning   reported only. fp16 kept positions (compared with the float32 model): fp16 rounding
            of the block outputs moves the float32 STA scores slightly, so near-tied tokens swap
            places or, rarely, swap in and out (measured on ViT-S r1=64: 97-100% of each stage's
            kept set agrees, the order less so). Both overlaps are reported; the logits and
            top-1 checks judge the outcome.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..errors import ValidationFailed

OK, FAIL, WARN = "✓", "✗", "!"


@dataclass
class Check:
    message: str
    ok: bool
    kind: str = "error"  # error | mismatch | warning
    case: str | None = None


@dataclass
class Case:
    label: str
    x: torch.Tensor


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def compare_case(case: Case, names: list[str], ours: list[torch.Tensor], ref: list[torch.Tensor], atol: float, fp16: bool) -> tuple[list[Check], float]:
    checks = []
    for name, o, r in zip(names, ours, ref):
        same = tuple(o.shape) == tuple(r.shape)
        checks.append(Check(f"{name}: {tuple(o.shape)} {'matches' if same else 'does not match'} {tuple(r.shape)}", same, "error", case.label))
    if not all(c.ok for c in checks):
        return checks, float("nan")
    kept_o, kept_r = ours[1:], ref[1:]
    if kept_o:
        equal = all(torch.equal(o.long().cpu(), r.long().cpu()) for o, r in zip(kept_o, kept_r))
        if equal:
            checks.append(Check(f"kept positions identical ({len(kept_o)} stages, {'/'.join(str(k.shape[1]) for k in kept_o)} tokens)", True, "error", case.label))
        else:
            per_stage = [(o.long().cpu() == r.long().cpu()).float().mean().item() for o, r in zip(kept_o, kept_r)]
            sets = [_set_overlap(o, r) for o, r in zip(kept_o, kept_r)]
            detail = ", ".join(f"stage {s + 1}: {100 * p:.1f}% same position, {100 * q:.1f}% same set" for s, (p, q) in enumerate(zip(per_stage, sets)))
            kind = "warning" if fp16 else "error"
            checks.append(Check(f"kept positions differ ({detail})", False, kind, case.label))
    logits_o, logits_r = ours[0], ref[0]
    same_top1 = torch.equal(logits_o.float().argmax(-1).cpu(), logits_r.float().argmax(-1).cpu())
    checks.append(Check(f"top-1 {'identical' if same_top1 else 'differs'}", same_top1, "mismatch", case.label))
    diff = _max_abs(logits_o.cpu(), logits_r.cpu())
    close = diff <= atol
    checks.append(Check(f"{'all values close' if close else 'values not close'} (atol: {atol:g}, max abs diff: {diff:.3g})", close, "mismatch", case.label))
    return checks, diff


def _set_overlap(o: torch.Tensor, r: torch.Tensor) -> float:
    """Fraction of the reference's kept tokens the exported model also kept (order ignored)."""
    o, r = o.long().cpu(), r.long().cpu()
    return (o[:, :, None] == r[:, None, :]).any(-1).float().mean().item()


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
) -> dict:
    """Run every case through both models and collect the checks. Raises nothing (see `enforce`)."""
    checks = list(extra or [])
    if actual_names is not None:  # ONNX declares names; a TorchScript program returns a tuple
        names_ok = list(actual_names) == list(names)
        checks.append(Check(f"output names match reference model ({', '.join(actual_names)})", names_ok, "error"))
        if not names_ok:
            cases = []
    diffs = []
    for case in cases:
        ours = run(case.x)
        if len(ours) != len(names):
            checks.append(Check(f"returns {len(ours)} outputs, expected {len(names)} ({', '.join(names)})", False, "error", case.label))
            break
        case_checks, diff = compare_case(case, names, ours, reference(case.x), atol, fp16)
        checks.extend(case_checks)
        diffs.append(diff)
    return {
        "atol": atol,
        "max_abs_diff": max(diffs) if diffs else None,
        "cases": [f"{c.label}" for c in cases],
        "checks": [asdict(c) for c in checks],
    }


def failures(result: dict, allow_mismatch: bool) -> list[dict]:
    fatal = {"error"} if allow_mismatch else {"error", "mismatch"}
    return [c for c in result["checks"] if not c["ok"] and c["kind"] in fatal]


def enforce(result: dict, allow_mismatch: bool) -> None:
    """ValidationFailed on the first fatal check (the caller's atomic output then disappears)."""
    bad = failures(result, allow_mismatch)
    result["ok"] = not bad
    if bad:
        first = bad[0]
        where = f" on {first['case']}" if first["case"] else ""
        hint = " (pass --allow-mismatch to keep it anyway)" if all(c["kind"] == "mismatch" for c in bad) else ""
        raise ValidationFailed(f"validation failed{where}: {first['message']}{hint}")


def format_block(result: dict, title: str) -> list[str]:
    """Optimum-style lines: a title, then `-[✓] ...` per check, grouped by case."""
    lines = [title]
    current = object()
    for c in result["checks"]:
        if c["case"] != current:
            current = c["case"]
            if current is not None:
                lines.append(f"\t- Validating on {current}")
        mark = OK if c["ok"] else (WARN if c["kind"] == "warning" else FAIL)
        indent = "\t\t" if c["case"] else "\t"
        lines.append(f"{indent}-[{mark}] {c['message']}")
    return lines
