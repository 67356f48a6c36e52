"""`sta eval`'s summary: top-1, top-5 and agreement with the unpruned model per setting, computed
from the per-video predictions (so a resumed run summarises every video, not only its own)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ... import __version__
from ...flops import FLOPS_LABEL
from ...io import outputs
from .dataset import Entry
from .store import SUMMARY_FILE, merge_timing, read_predictions, write_predictions


@dataclass
class Counts:
    videos: int
    top1_correct: int
    top5_correct: int
    agree: int


@dataclass
class SettingRow:
    """One evaluated setting: r1 = 0 (the unpruned reference) or an STA setting."""

    key: str  # its key in predictions.jsonl
    r1: int
    sta: dict
    tokens: list[int]  # entering the network, then after each STA stage
    gflops_per_clip: float
    top1: float | None = None  # None: no video could be read
    top5: float | None = None
    agreement_with_unpruned: float | None = None
    counts: Counts | None = None
    gflops_per_video: float = 0.0
    clips_per_s: float | None = None  # model throughput, summed over ranks and resumed runs
    timed_clips: int = 0


@dataclass
class DatasetInfo:
    path: str
    videos: int
    sha256: str


@dataclass
class EvalModel:
    spec: str
    revision: str | None
    name: str
    weights: list  # [file name, size in bytes, sha256] per weights file
    labels: list[str]
    config: dict = field(default_factory=dict)  # the architecture as built (VideoMAEConfig / VideoSwinConfig)
    family: str = ""
    params: int = 0


@dataclass
class VideoCounts:
    total: int
    evaluated: int
    failed: int


@dataclass
class FailedVideo:
    index: int
    path: str
    error: str


@dataclass
class ThisRun:
    """What this invocation did (a resumed run only its share)."""

    world_size: int
    videos: int
    wall_seconds: float
    videos_per_s: float | None
    new_failures: int


@dataclass
class EvalSummary:
    """OUT/summary.json, and what `evaluate` returns on every rank."""

    sta_version: str
    dataset: DatasetInfo
    model: EvalModel
    views: str  # "TxS"
    views_per_video: int
    precision: str
    flops_convention: str
    videos: VideoCounts
    failed: list[FailedVideo] = field(default_factory=list)
    settings: list[SettingRow] = field(default_factory=list)
    this_run: ThisRun | None = None
    output: str = ""


def summarise(records: dict[int, dict], settings: list[SettingRow], ref_key: str) -> None:
    """Top-1, top-5 and agreement with the unpruned model per setting (filled into `settings`)."""
    good = [records[i] for i in sorted(records) if "error" not in records[i]]
    n = len(good)
    for s in settings:
        top1 = sum(r["predictions"][s.key]["top5"][0] == r["label"] for r in good)
        top5 = sum(r["label"] in r["predictions"][s.key]["top5"] for r in good)
        agree = sum(r["predictions"][s.key]["top5"][0] == r["predictions"][ref_key]["top5"][0] for r in good)
        s.top1, s.top5, s.agreement_with_unpruned = (top1 / n, top5 / n, agree / n) if n else (None, None, None)
        s.counts = Counts(n, top1, top5, agree)


def finish(
    out_dir: Path, entries: list[Entry], settings: list[SettingRow], rates: list[dict], run: dict, model: EvalModel,
    this_run: ThisRun,
) -> EvalSummary:  # fmt: skip
    """Rank 0: sort predictions.jsonl by video, write summary.json."""
    keys = [s.key for s in settings]
    records = read_predictions(out_dir, entries, keys)
    write_predictions(out_dir, records)
    timing = merge_timing(out_dir, rates)
    summarise(records, settings, keys[0])
    n_t, n_s = run["views"]
    for row in settings:
        t = timing.get(row.key)
        row.gflops_per_video = round(row.gflops_per_clip * n_t * n_s, 4)
        row.clips_per_s = round(t["clips"] / t["seconds"], 3) if t and t["seconds"] > 0 else None
        row.timed_clips = t["clips"] if t else 0
    failed = [FailedVideo(i, records[i]["path"], records[i]["error"]) for i in sorted(records) if "error" in records[i]]
    summary = EvalSummary(
        sta_version=__version__,
        dataset=DatasetInfo(**run["dataset"]),
        model=model,
        views=f"{n_t}x{n_s}",
        views_per_video=n_t * n_s,
        precision=run["precision"],
        flops_convention=FLOPS_LABEL,
        videos=VideoCounts(len(entries), len(records) - len(failed), len(failed)),
        failed=failed,
        settings=settings,
        this_run=this_run,
        output=str(out_dir),
    )
    outputs.write_text(out_dir / SUMMARY_FILE, outputs.dumps(summary) + "\n")
    return summary
