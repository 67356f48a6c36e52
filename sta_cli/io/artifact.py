"""The artifact `sta prune` writes, and atomic output folders.

An artifact folder holds:
  model.safetensors  weights in sta's layout
  config.json        architecture, labels, preprocessing, source
  sta.json           pruning settings
  report.json        what `sta prune` measured
Every writer builds its folder under a temporary name next to the target and renames it at the
end, so a failure never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch.nn as nn
from safetensors.torch import save_file

from ..errors import StaError
from ..pruning import STAConfig

FORMAT_VERSION = 1


def check_writable(out: Path, force: bool) -> None:
    """Fail early, before any heavy work, if `out` cannot be (re)created."""
    if out.exists() and not force:
        raise StaError(f"{out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise StaError(f"{out} exists and is not a folder")
    parent = out.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise StaError(f"cannot write to {out}: {probe} is not writable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(out: Path, force: bool = False):
    """Yield a temporary folder; on success it replaces `out`, on any error it disappears."""
    out = Path(out)
    check_writable(out, force)
    try:
        out.resolve().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is a normal folder
    except OSError as e:
        raise StaError(f"cannot write to {out}: {e.strerror or e}") from None
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:  # disk full, permissions changed under us...: a clean error, nothing left
        shutil.rmtree(tmp, ignore_errors=True)
        raise StaError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files(folder: Path, names: list[str]):
    """Yield a temporary folder whose files, on success, are moved into `folder` (for outputs that
    go inside an existing folder, such as an export into an artifact)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".sta-", suffix=".tmp", dir=folder))
    except OSError as e:
        raise StaError(f"cannot write to {folder}: {e.strerror or e}") from None
    try:
        yield tmp
        for name in names:
            if (tmp / name).exists():
                os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_config(model: nn.Module) -> dict:
    """config.json: everything needed to rebuild the network and feed it."""
    return {
        "format": "sta-artifact",
        "format_version": FORMAT_VERSION,
        "architecture": model.family,
        "model": model.cfg.to_dict(),
        "labels": list(model.labels),
        "preprocessing": dict(model.preprocessing),
        "source": getattr(model, "source_name", None),
        "provenance": getattr(model, "provenance", None),  # where input size, heads, normalisation came from
    }


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_model(folder: Path, model: nn.Module, sta: STAConfig) -> None:
    """Weights, config.json and sta.json into `folder` (a temporary folder from `atomic_dir`);
    `report.json` follows once the written model has been validated."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt", "producer": "sta"})
    write_json(folder / "config.json", model_config(model))
    write_json(folder / "sta.json", {**sta.to_dict(), "stages": [s.__dict__ for s in model.stages]})


def is_artifact(folder: Path) -> bool:
    return (folder / "sta.json").is_file() and (folder / "config.json").is_file()


def find_artifacts(folder: Path = Path(".")) -> list[Path]:
    """Artifact folders directly inside `folder` (or `folder` itself), newest first."""
    folder = Path(folder)
    found = [folder] if is_artifact(folder) else []
    found += [p for p in folder.iterdir() if p.is_dir() and is_artifact(p)] if folder.is_dir() else []
    return sorted(found, key=lambda p: (p / "sta.json").stat().st_mtime, reverse=True)
