"""`sta eval`'s output folder: run.json (what is being evaluated, so that a re-run resumes only
the same evaluation), predictions.jsonl (one line per video, appended as they finish), the
timing accumulated over resumed runs, and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import StaError
from ...io import outputs
from ...io.artifact import sta_kind
from .dataset import Entry, file_identity

RUN_FILE, PREDICTIONS_FILE, SUMMARY_FILE = "run.json", "predictions.jsonl", "summary.json"
TIMING_FILE = ".timing.json"  # forward time per setting, accumulated over resumed runs
RUN_FORMAT = "sta-eval"


def default_out(source_name: str, dataset: Path) -> Path:
    return Path(f"eval-{source_name}-{dataset.stem or dataset.resolve().name}")


def _differences(old: dict, new: dict) -> list[str]:
    names = {
        "dataset": "dataset",
        "model": "model",
        "settings": "r1 / STA settings",
        "views": "views",
        "precision": "precision",
        "preprocessing": "preprocessing",
        "format": "format",
    }
    return [names.get(k, k) for k in names if old.get(k) != new.get(k)]


def _eval_run_problem(run_file: Path) -> str | None:
    """Why `run_file` is not an sta eval run.json (None if it is)."""
    try:
        record = json.loads(run_file.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        return f"not an sta eval record (no format {RUN_FORMAT!r})"
    return None


def _refuse_foreign(out: Path) -> None:
    """OUT is refused, with or without --force, when sta cannot take it for an eval output: --force
    would mix eval files into an artifact, and cannot know what wrote a run.json it cannot read."""
    kind = sta_kind(out)
    if kind is not None:
        raise StaError(
            f"{out} was written by sta prune or sta export ({kind}) and is not an sta eval output; "
            "eval never writes into it, even with --force: choose another -o"
        )
    run_file = out / RUN_FILE
    problem = _eval_run_problem(run_file) if run_file.is_file() else None
    if problem:
        raise StaError(
            f"{run_file} is {problem}, so sta cannot tell what wrote {out} and leaves it alone, even with "
            "--force: remove the folder yourself or choose another -o"
        )


def prepare_out(out: Path, run: dict, force: bool) -> None:
    """Create OUT or check that it holds a run of the same evaluation (rank 0 only)."""
    if out.exists() and not out.is_dir():
        raise StaError(f"{out} exists and is not a folder")
    _refuse_foreign(out)
    run_file = out / RUN_FILE
    if out.is_dir() and force and any(out.iterdir()) and not run_file.is_file():
        outputs.check_folder_target(out, force=True)  # raises: what is there, and that sta leaves it alone
    if out.is_dir() and force:
        for name in (RUN_FILE, PREDICTIONS_FILE, SUMMARY_FILE, TIMING_FILE):
            (out / name).unlink(missing_ok=True)
    elif run_file.is_file():
        diff = _differences(json.loads(run_file.read_text()), run)  # readable: checked above
        if diff:
            raise StaError(
                f"{out} holds results of a different evaluation (differs in: {', '.join(diff)}); "
                f"use another -o folder, or pass --force to discard them"
            )
        return
    elif out.is_dir() and any(out.iterdir()):
        raise StaError(f"{out} is not empty and holds no sta eval run; use another -o folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        outputs.write_text(run_file, outputs.dumps(run) + "\n")
    except OSError as e:
        raise StaError(f"cannot write to {out}: {e.strerror or e}") from None


def read_predictions(out: Path, entries: list[Entry], keys: list[str]) -> dict[int, dict]:
    """Videos of earlier runs, by index; a video redone on resume (see `finished`) has a later line,
    which wins. A line cut short by an interruption is dropped (and the file rewritten without it,
    so new lines are appended to whole lines only)."""
    path = out / PREDICTIONS_FILE
    if not path.is_file():
        return {}
    records, dropped = {}, 0
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
            i = r["index"]
            ok = 0 <= i < len(entries) and r["path"] == entries[i].name
            ok = ok and ("error" in r or all(k in r["predictions"] for k in keys))
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            records[i] = r
        else:
            dropped += 1
    if dropped:
        write_predictions(out, records)
    return records


def finished(records: dict[int, dict], entries: list[Entry]) -> set[int]:
    """Videos a resumed run skips: read without error from the file that is there now. A video that
    failed is tried again (it may have been cut short while being copied); a file replaced since its
    prediction (other size or modification time) is evaluated again."""
    return {i for i, r in records.items() if "error" not in r and r.get("file") == file_identity(entries[i].path)}


def write_predictions(out: Path, records: dict[int, dict]) -> None:
    """predictions.jsonl rewritten whole, one line per video in dataset order."""
    text = "".join(outputs.dumps(records[i], indent=None) + "\n" for i in sorted(records))
    outputs.write_text(out / PREDICTIONS_FILE, text)


def merge_timing(out_dir: Path, rates: list[dict]) -> dict:
    """Model throughput per setting: this run's ranks work in parallel, so their rates add up; runs
    that resumed one another add their clips and their (rate-equivalent) seconds."""
    path = out_dir / TIMING_FILE
    try:
        total = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        total = {}
    for key in {k for r in rates for k in r}:
        clips = sum(r[key]["clips"] for r in rates if key in r)
        rate = sum(r[key]["clips"] / r[key]["seconds"] for r in rates if key in r and r[key]["seconds"] > 0)
        if clips and rate:
            t = total.setdefault(key, {"clips": 0, "seconds": 0.0})
            t["clips"] += clips
            t["seconds"] += clips / rate
    outputs.write_text(path, outputs.dumps(total))
    return total
