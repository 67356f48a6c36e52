"""What an sta artifact is: its files, its format marker and the checksums that make it trustworthy.

An artifact folder (written by `sta prune`) holds:
  model.safetensors  weights in sta's layout
  config.json        architecture, labels, preprocessing, source
  sta.json           pruning settings
  report.json        what `sta prune` measured
  manifest.json      {"format": "sta-artifact", "files": {name: {"sha256", "bytes"}}}
`sta export` adds its model files (model.onnx, model.pt, ...) and their checksums; an export into a
folder of its own is an "sta-export" folder with the same manifest. Loading checks every recorded
file it reads against its checksum, so a damaged or replaced file is an error, never a result.
Writing itself (temporary folders, atomic publish, --force rules) is `io.outputs`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from .. import __version__
from ..errors import StaError
from ..pruning import STAConfig
from .outputs import LOCK_SUFFIX, drawn_by_sta, is_tmp, write_json

MANIFEST = "manifest.json"
ARTIFACT, EXPORT = "sta-artifact", "sta-export"
FORMAT_VERSION = 2
ARTIFACT_FILES = ("model.safetensors", "config.json", "sta.json")
# What sta 0.1 wrote into its folders (it kept no manifest).
LEGACY_FILES = (*ARTIFACT_FILES, "report.json", "model.onnx", "model.onnx.data", "model.pt", "model.pt2")


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def sta_kind(folder: Path) -> str | None:
    """ "sta-artifact" or "sta-export" if sta wrote `folder` (its manifest, or an sta 0.1 config.json), else None."""
    folder = Path(folder)
    if is_tmp(folder) or not folder.is_dir():
        return None
    kind = (manifest(folder) or {}).get("format")
    if kind in (ARTIFACT, EXPORT):
        return kind
    legacy = (_read_json(folder / "config.json") or {}).get("format")  # sta 0.1 wrote no manifest
    if legacy == EXPORT or legacy == ARTIFACT and (folder / "sta.json").is_file():
        return legacy
    return None


def foreign_entries(folder: Path) -> list[str]:
    """Entries of the sta folder `folder` that sta did not write: not in its manifest (an sta 0.1
    folder has none: not a file sta 0.1 wrote). --force never replaces a folder holding any, and
    sta never rewrites one. Writers' temporary and lock files, and pictures sta drew, are sta's."""
    record = manifest(folder) or {}
    files = record.get("files") if record.get("format") in (ARTIFACT, EXPORT) else None
    ours = {MANIFEST, *files} if isinstance(files, dict) else set(LEGACY_FILES)
    return sorted(
        p.name
        for p in Path(folder).iterdir()
        if p.name not in ours and not is_tmp(p) and not p.name.endswith(LOCK_SUFFIX) and not drawn_by_sta(p)
    )


def is_artifact(folder: Path) -> bool:
    return sta_kind(folder) == ARTIFACT


def find_artifacts(folder: Path = Path(".")) -> list[Path]:
    """Artifact folders directly inside `folder` (or `folder` itself), newest first; hidden and
    temporary folders (a run in progress, or one that crashed) are never artifacts."""
    folder = Path(folder)
    found = [folder] if is_artifact(folder) else []
    if folder.is_dir():
        found += [p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir() and is_artifact(p)]
    return sorted(found, key=lambda p: (p / "config.json").stat().st_mtime, reverse=True)


# --- checksums --------------------------------------------------------------------------------------------


def file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": Path(path).stat().st_size}


def weights_digest(model: nn.Module) -> str:
    """sha256 over the model's tensors (names, dtypes, shapes, bytes): which weights an export holds,
    whatever file they came from. A few seconds for ViT-H, once per export."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        digest.update(f"{name} {t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def manifest(folder: Path) -> dict | None:
    return _read_json(Path(folder) / MANIFEST)


def write_manifest(tmp: Path, kind: str, names: list[str], keep: dict | None = None) -> None:
    """manifest.json in `tmp`: checksums of `names` (files in `tmp`) plus the `keep` records of files
    already published beside it."""
    files = dict(keep or {})
    files.update({name: file_record(tmp / name) for name in names if (tmp / name).is_file()})
    write_json(
        tmp / MANIFEST, {"format": kind, "format_version": FORMAT_VERSION, "sta_version": __version__, "files": files}
    )


def verify(folder: Path, names: list[str] | None = None) -> None:
    """Check the files sta recorded in `folder` (or just `names`, where they exist) against their
    checksums; one of `names` that sta did not record is an error too. Only folders sta 0.1 wrote
    (format_version 1) have no manifest, and nothing to check."""
    folder = Path(folder)
    record = manifest(folder)
    if record is None:
        if (folder / MANIFEST).exists():
            raise StaError(f"{folder / MANIFEST} is unreadable: the artifact is damaged (re-run sta prune)")
        if (_read_json(folder / "config.json") or {}).get("format_version", 1) != 1:
            raise StaError(
                f"{folder / MANIFEST} is missing: the folder was changed after sta wrote it (re-run sta prune)"
            )
        return
    files = record.get("files") or {}
    for name in names if names is not None else list(files):
        if name not in files:
            if os.path.lexists(folder / name):
                raise StaError(
                    f"{folder / name} is not a file sta recorded in {folder / MANIFEST}: sta does not read it"
                )
            continue
        path = folder / name
        if not path.is_file():
            raise StaError(f"{path} is missing: the artifact is incomplete (re-run sta prune)")
        expected = files[name]
        if path.stat().st_size != expected.get("bytes") or file_record(path)["sha256"] != expected.get("sha256"):
            raise StaError(
                f"{path} does not match the checksum sta recorded when it wrote it: the file was changed or damaged"
            )


def verify_graph(path: Path) -> None:
    """An exported graph (and its .data file) read from a folder sta wrote: as sta recorded it."""
    path = Path(path)
    if sta_kind(path.parent) is not None:
        verify(path.parent, [path.name, path.name + ".data"])


def check_complete(folder: Path) -> None:
    """An artifact must hold all of its files; name the missing ones."""
    missing = [n for n in ARTIFACT_FILES if not (Path(folder) / n).is_file()]
    if missing:
        raise StaError(f"{folder} is an incomplete sta artifact: missing {', '.join(missing)} (re-run sta prune)")


# --- the artifact's contents ------------------------------------------------------------------------------


def model_config(model: nn.Module) -> dict:
    """config.json: everything needed to rebuild the network and feed it."""
    return {
        "format": ARTIFACT,
        "format_version": FORMAT_VERSION,
        "architecture": model.card.family,
        "model": model.cfg.to_dict(),
        "labels": list(model.card.labels),
        "preprocessing": dict(model.card.preprocessing),
        "source": model.card.source_name,
        "provenance": model.card.provenance,  # where input size, heads, normalisation came from
    }


def write_model(folder: Path, model: nn.Module, sta: STAConfig) -> None:
    """Weights, config.json and sta.json into `folder` (a temporary folder from `outputs.new_folder`);
    report.json and the manifest follow once the written model has been validated."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt", "producer": "sta"})
    write_json(folder / "config.json", model_config(model))
    write_json(folder / "sta.json", {**sta.to_dict(), "stages": [s.__dict__ for s in model.stages]})
