"""`sta eval`'s dataset: a list file, a CSV or a folder of class subfolders, checked before any
work; labels mapped to the model's classes; videos decoded in fixed chunks by DataLoader workers.

Videos are grouped into fixed chunks by their index in the dataset (a chunk is what one forward
pass sees), so a video's logits do not depend on the number of processes or on what an earlier
interrupted run finished: a CPU matmul's result for one sample can change with the other samples
in its batch, so batches must not.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import StaError
from ...io import video as video_io

PATH_COLUMNS = ("path", "video", "video_path", "file", "filename", "clip")
LABEL_COLUMNS = ("label", "label_id", "class", "class_name", "category", "action")


@dataclass(frozen=True)
class Entry:
    """One labelled video. `name` is the path as the dataset writes it (the key in predictions.jsonl)."""

    name: str
    path: Path
    label: int
    where: str  # "val.txt line 12": for error messages


@dataclass(frozen=True)
class _Raw:
    name: str
    path: Path
    label: str
    where: str


def _read_list(path: Path, root: Path | None) -> list[_Raw]:
    """A VideoMAE-style list (`path label` per line, whitespace-separated, no header) or a CSV
    with a header naming the path and label columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise StaError(f"cannot read dataset list {path}: {e}") from None
    base = root if root is not None else path.resolve().parent
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    header = [h.strip().lower() for h in next(csv.reader([first]))] if "," in first else []
    raws = []
    if header and any(h in PATH_COLUMNS for h in header):
        p_col = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
        l_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
        if l_col is None:
            raise StaError(f"{path}: the CSV header has no label column (one of {', '.join(LABEL_COLUMNS)})")
        rows = csv.reader(lines)
        next(rows)
        for n, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) <= max(p_col, l_col):
                raise StaError(f"{path} line {n}: expected {len(header)} columns, got {len(row)}")
            raws.append(
                _Raw(row[p_col].strip(), base / row[p_col].strip(), row[l_col].strip(), f"{path.name} line {n}")
            )
    elif header and any(h in LABEL_COLUMNS for h in header):
        raise StaError(f"{path}: the CSV header has no path column (one of {', '.join(PATH_COLUMNS)})")
    else:
        for n, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)  # the label is the last field; the path may contain spaces
            if len(parts) != 2:
                raise StaError(f"{path} line {n}: expected `path label`, got {line!r}")
            raws.append(_Raw(parts[0], base / parts[0], parts[1], f"{path.name} line {n}"))
    return raws  # absolute paths stay absolute: base / "/abs/x" is "/abs/x"


def _read_folder(folder: Path) -> list[_Raw]:
    """One subfolder per class; videos anywhere below it."""
    raws = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(cls.rglob("*")):
            if f.is_file() and f.suffix.lower() in video_io.VIDEO_SUFFIXES and not f.name.startswith("."):
                name = f.relative_to(folder).as_posix()
                raws.append(_Raw(name, f, cls.name, f"folder {cls.name}/"))
    return raws


def read_entries(dataset: str | Path, root: str | Path | None = None) -> list[_Raw]:
    """Parse DATASET and check that every video exists (labels are checked against the model later)."""
    dataset = Path(dataset)
    if not dataset.exists():
        raise StaError(
            f"no such dataset: {dataset} (expected a list file, a CSV or a folder with one subfolder per class)"
        )
    root = Path(root) if root is not None else None
    raws = _read_folder(dataset) if dataset.is_dir() else _read_list(dataset, root)
    if not raws:
        what = "no videos in class subfolders" if dataset.is_dir() else "no entries"
        raise StaError(f"{dataset}: {what}")
    missing = [r for r in raws if not r.path.is_file()]
    if missing:
        shown = ", ".join(f"{r.name} ({r.where})" for r in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise StaError(f"{len(missing)} of {len(raws)} videos in {dataset} do not exist: {shown}{more}")
    return raws


def _norm(label: str) -> str:
    return " ".join(label.lower().replace("_", " ").replace("-", " ").split())


def map_labels(raws: list[_Raw], labels: list[str], dataset: str | Path) -> list[Entry]:
    """Labels as the model's names (exact, then ignoring case, '_' and '-') or as class indices."""
    exact = {name: i for i, name in enumerate(labels)}
    loose = {}
    for i, name in enumerate(labels):
        loose.setdefault(_norm(name), i)
    entries, unknown = [], []
    for r in raws:
        i = exact.get(r.label)
        if i is None and r.label.isdigit() and int(r.label) < len(labels):
            i = int(r.label)
        if i is None:
            i = loose.get(_norm(r.label))
        if i is None:
            unknown.append(r)
            continue
        entries.append(Entry(r.name, r.path, i, r.where))
    if unknown:
        names = sorted({r.label for r in unknown})
        shown = ", ".join(f"{n!r}" for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise StaError(
            f"{len(unknown)} videos in {dataset} have labels the model does not know: {shown} "
            f"(first at {unknown[0].where}; the model has {len(labels)} classes, e.g. {labels[0]!r}; "
            f"use its names or indices 0..{len(labels) - 1})"
        )
    return entries


def dataset_digest(entries: list[Entry]) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.name}\t{e.path.resolve()}\t{e.label}\n".encode())
    return h.hexdigest()


def decode_views(path: Path, pre: dict, views: tuple[int, int]) -> torch.Tensor:
    """A video's T x S views as (T*S, C, T, H, W); our own progress bar covers decoding."""
    return video_io.load_clip(path, pre, views=views, show_progress=False)


class ChunkDataset(torch.utils.data.Dataset):
    """Item k = the decoded views of every video in chunk k: [(index, views or None, error or None, warnings)]."""

    def __init__(self, entries: list[Entry], chunks: list[list[int]], pre: dict, views: tuple[int, int]):
        self.entries, self.chunks, self.pre, self.views = entries, chunks, pre, views

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int):
        items = []
        for i in self.chunks[k]:
            with warnings.catch_warnings(record=True) as caught:  # e.g. "padded": logged by rank 0, kept in the record
                warnings.simplefilter("always")
                try:
                    views, error = decode_views(self.entries[i].path, self.pre, self.views), None
                except Exception as e:  # a corrupt video is reported, never fatal
                    views, error = None, str(e) or type(e).__name__
            items.append((i, views, error, [str(w.message) for w in caught]))
        return items


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the model for cores


def make_chunks(n: int, videos_per_chunk: int) -> list[list[int]]:
    return [list(range(s, min(n, s + videos_per_chunk))) for s in range(0, n, videos_per_chunk)]
