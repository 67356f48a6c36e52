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
    columns: tuple[tuple[str, str], ...] = ()  # a CSV row's label columns as (column, label); label is the first


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
        l_cols = [header.index(c) for c in LABEL_COLUMNS if c in header]
        if not l_cols:
            raise StaError(f"{path}: the CSV header has no label column (one of {', '.join(LABEL_COLUMNS)})")
        rows = csv.reader(lines)
        next(rows)
        for n, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) <= max(p_col, *l_cols):
                raise StaError(f"{path} line {n}: expected {len(header)} columns, got {len(row)}")
            name, labels = row[p_col].strip(), tuple((header[c], row[c].strip()) for c in l_cols)
            raws.append(_Raw(name, base / name, labels[0][1], f"{path.name} line {n}", labels))
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
    _check_duplicates(raws, dataset)
    return raws


def _check_duplicates(raws: list[_Raw], dataset: Path) -> None:
    """Each video counts once (the paper's protocol): a list naming one twice is a mistake, whatever the spelling."""
    by_file: dict[Path, list[_Raw]] = {}
    for r in raws:
        by_file.setdefault(r.path.resolve(), []).append(r)
    repeated = [group for group in by_file.values() if len(group) > 1]
    if repeated:
        first = repeated[0]
        more = f", and {len(repeated) - 1} more videos more than once" if len(repeated) > 1 else ""
        raise StaError(
            f"{dataset} lists the same video {len(first)} times: {first[0].name} at "
            f"{', '.join(r.where for r in first)}{more}; list each video once"
        )


def _norm(label: str) -> str:
    return " ".join(label.lower().replace("_", " ").replace("-", " ").split())


def map_labels(raws: list[_Raw], labels: list[str], dataset: str | Path) -> list[Entry]:
    """Labels as the model's class names or as class indices, read the same way for the whole dataset."""
    classes = _read_labels(raws, [r.label for r in raws], labels, dataset)
    _check_label_columns(raws, classes, labels, dataset)
    return [Entry(r.name, r.path, i, r.where) for r, i in zip(raws, classes)]


def _as_name(label: str, exact: dict, loose: dict) -> int | None:
    i = exact.get(label)
    return i if i is not None else loose.get(_norm(label))


def _as_index(label: str, n: int) -> int | None:
    # ASCII digits only: '²'.isdigit() is true but int('²') fails.
    return int(label) if label.isascii() and label.isdigit() and int(label) < n else None


def _read_labels(raws: list[_Raw], values: list[str], labels: list[str], dataset) -> list[int]:
    """Class indices of `values` (one per raw): names if every label is a class name, else indices if
    every label is one. Deciding per line would read classes named '1'..'8' listed as indices 0..7
    as 0, 0, 1, ...: where one label means two classes, the dataset is refused instead."""
    exact = {name: i for i, name in enumerate(labels)}
    loose = {}
    for i, name in enumerate(labels):
        loose.setdefault(_norm(name), i)
    names = [_as_name(v, exact, loose) for v in values]
    indices = [_as_index(v, len(labels)) for v in values]
    all_names, all_indices = None not in names, None not in indices
    if all_names != all_indices:
        return names if all_names else indices
    _check_unknown(raws, values, names, indices, labels, dataset)
    clash = next((k for k, (a, b) in enumerate(zip(names, indices)) if None not in (a, b) and a != b), None)
    if clash is not None:
        v, a, b = values[clash], names[clash], indices[clash]
        raise StaError(
            f"labels in {dataset} are ambiguous: the model's class names are numbers, and {v!r} "
            f"(first at {raws[clash].where}) is the name of class {a} but also the index of class {b} "
            f"({labels[b]!r}); sta cannot tell which the dataset means"
        )
    return [a if a is not None else b for a, b in zip(names, indices)]  # a mix, each label readable one way


def _check_unknown(raws, values, names, indices, labels, dataset) -> None:
    unknown = [k for k, (a, b) in enumerate(zip(names, indices)) if a is None and b is None]
    if unknown:
        found = sorted({values[k] for k in unknown})
        shown = ", ".join(f"{n!r}" for n in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise StaError(
            f"{len(unknown)} videos in {dataset} have labels the model does not know: {shown} "
            f"(first at {raws[unknown[0]].where}; the model has {len(labels)} classes, e.g. {labels[0]!r}; "
            f"use its names or indices 0..{len(labels) - 1})"
        )


def _check_label_columns(raws: list[_Raw], classes: list[int], labels: list[str], dataset) -> None:
    """A CSV with two label columns (`label` and `class_name`, say) is read only if they agree on
    every row: which one is the model's is not sta's guess to make."""
    columns = raws[0].columns  # every row of a CSV has the same label columns
    for k in range(1, len(columns)):
        values = [r.columns[k][1] for r in raws]
        try:
            other = _read_labels(raws, values, labels, dataset)
        except StaError:
            other = None  # not the model's classes at all
        if other != classes:
            # identical text reads identically, so a row whose labels differ exists when `other` is None
            bad = next(n for n, r in enumerate(raws) if (other[n] != classes[n] if other else values[n] != r.label))
            r = raws[bad]
            raise StaError(
                f"{dataset} has two label columns, {columns[0][0]!r} and {columns[k][0]!r}, that disagree "
                f"(first at {r.where}: {r.label!r} and {values[bad]!r}); drop one of them or rename it "
                f"to a column sta does not read"
            )


def dataset_digest(entries: list[Entry]) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.name}\t{e.path.resolve()}\t{e.label}\n".encode())
    return h.hexdigest()


def decode_views(path: Path, pre: dict, views: tuple[int, int]) -> torch.Tensor:
    """A video's T x S views as (T*S, C, T, H, W); our own progress bar covers decoding."""
    return video_io.load_clip(path, pre, views=views, show_progress=False)


def file_identity(path: Path) -> list[int] | None:
    """[size, mtime_ns] of a video file, None if it is gone: enough to notice a file replaced or still
    being copied since its prediction was made (a checksum would read every video once more)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


class ChunkDataset(torch.utils.data.Dataset):
    """Item k = the decoded views of every video in chunk k:
    [(index, views or None, error or None, warnings, file identity before decoding)]."""

    def __init__(self, entries: list[Entry], chunks: list[list[int]], pre: dict, views: tuple[int, int]):
        self.entries, self.chunks, self.pre, self.views = entries, chunks, pre, views

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int):
        items = []
        for i in self.chunks[k]:
            file = file_identity(self.entries[i].path)  # before decoding: a change while decoding shows later
            with warnings.catch_warnings(record=True) as caught:  # e.g. "padded": logged by rank 0, kept in the record
                warnings.simplefilter("always")
                try:
                    views, error = decode_views(self.entries[i].path, self.pre, self.views), None
                except Exception as e:  # a corrupt video is reported, never fatal
                    views, error = None, str(e) or type(e).__name__
            items.append((i, views, error, [str(w.message) for w in caught], file))
        return items


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the model for cores


def make_chunks(n: int, videos_per_chunk: int) -> list[list[int]]:
    return [list(range(s, min(n, s + videos_per_chunk))) for s in range(0, n, videos_per_chunk)]
