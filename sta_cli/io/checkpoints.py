"""Find a model's files (alias, Hub repo id, local folder or weights file) and read its weights safely.

Loading never executes code from a checkpoint: safetensors first, otherwise
`torch.load(weights_only=True)`, which refuses pickles that hold anything but tensors and containers.
The one extra type allowed is `argparse.Namespace`: VideoMAE's and VideoMAE V2's `utils.save_model`
store the training arguments in it, and unpickling it only sets attributes.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import pickle
import re
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import StaError
from ..models.overrides import ArchOverrides, log
from ..models.registry import ALIASES, Alias
from . import artifact

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
# Looked up in this order in a folder or a Hub repo.
WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# transformers' shard names: model-00002-of-00003.safetensors, pytorch_model-00001-of-00002.bin
_SHARD_TOTAL = re.compile(r"^.*-\d{5}-of-(\d{5})\.\w+$")


@dataclass
class Source:
    """Where a model comes from, and the files that describe it."""

    spec: str  # what the user typed
    name: str  # short name for default output folders and reports
    weights: list[Path]  # one file, or the shards of a sharded checkpoint
    config: dict | None = None  # config.json (Hugging Face or sta spelling)
    preprocessor: dict | None = None  # preprocessor_config.json, if any
    sta: dict | None = None  # sta.json of an sta artifact
    alias: Alias | None = None
    hub: dict | None = field(default=None)  # repo id and revision when it came from the Hub
    arch: ArchOverrides = field(default_factory=ArchOverrides)  # explicit --num-heads, --image-size, ...

    @property
    def is_artifact(self) -> bool:
        return self.sta is not None

    @property
    def weights_label(self) -> str:
        """The weights file's name, or the first shard's and how many follow (for messages)."""
        more = len(self.weights) - 1
        return self.weights[0].name + (f" and {more} more shards" if more else "")


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StaError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise StaError(f"{path} is not a JSON object (it holds a {type(obj).__name__})")
    return obj


def _weights_in(folder: Path) -> list[Path]:
    for name in WEIGHT_NAMES:
        p = folder / name
        if p.is_file():
            return _expand_index(p)
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(found) == 1:
        return found
    if not found:
        raise StaError(f"no weights in {folder}: expected model.safetensors, pytorch_model.bin or one .pth file")
    raise StaError(f"several weight files in {folder} ({', '.join(p.name for p in found)}): pass one of them")


def _expand_index(path: Path) -> list[Path]:
    """A sharded checkpoint's index -> its shard files."""
    if not path.name.endswith(".index.json"):
        return [path]
    shards = sorted(set(_read_json(path).get("weight_map", {}).values()))
    files = [path.parent / s for s in shards]
    missing = [f.name for f in files if not f.is_file()]
    if missing or not files:
        raise StaError(f"{path} names shards that are missing: {', '.join(missing) or 'none listed'}")
    totals = {m[1] for m in map(_SHARD_TOTAL.match, shards) if m}  # "-of-00003": 3 shards in all
    if len(totals) == 1 and len(shards) < (total := int(totals.pop())):
        # transformers would load the listed shards and leave the rest of the model random
        raise StaError(
            f"{path.name} lists {len(shards)} of the {total} shards its file names count: an incomplete index"
        )
    return files


def _folder_name(path: Path) -> str:
    """A folder's name; a Hugging Face cache snapshot (models--org--repo/snapshots/<commit>) is named by its repo."""
    path = path.absolute()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.resolve().name


def local_source(path: Path, spec: str) -> Source:
    if path.is_dir():
        kind = artifact.sta_kind(path)
        if kind == artifact.EXPORT:  # its model.pt is a TorchScript program, not weights
            raise StaError(
                f"{path} is an sta export folder (exported graphs, no weights): load the artifact or model "
                "it was exported from, or time a graph with sta profile --onnx"
            )
        if kind == artifact.ARTIFACT:
            artifact.check_complete(path)
        if kind is not None:  # what sta wrote is read only if it is what sta wrote
            artifact.verify(path, list(artifact.ARTIFACT_FILES))
        config = _read_json(path / "config.json") if (path / "config.json").is_file() else None
        pre = path / "preprocessor_config.json"
        sta = path / "sta.json" if kind == artifact.ARTIFACT else None
        return Source(
            spec=spec,
            name=_folder_name(path),
            weights=_weights_in(path),
            config=config,
            preprocessor=_read_json(pre) if pre.is_file() else None,
            sta=_read_json(sta) if sta is not None else None,
        )
    if path.suffix not in WEIGHT_SUFFIXES and not path.name.endswith(".index.json"):
        raise StaError(f"{path} is not a weights file (expected {', '.join(WEIGHT_SUFFIXES)}) or a model folder")
    if artifact.sta_kind(path.parent) is not None:
        artifact.verify(path.parent, [path.name])
    return Source(spec=spec, name=path.stem, weights=_expand_index(path))


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """None if the Hub endpoint (HF_ENDPOINT) answers at all, else why not.

    huggingface_hub retries a refused or timed-out connection with backoff for every file (minutes,
    dozens of log lines), so sta asks once, with a short timeout, before fetching anything.
    """
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    from huggingface_hub import constants

    try:
        urlopen(Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except HTTPError:  # it answered
        return None
    except (URLError, OSError, ValueError) as e:
        return f"{constants.ENDPOINT}: {getattr(e, 'reason', None) or e}"
    return None


def _hub_fetcher(repo_id: str, revision: str | None, token, local_only: bool):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, token=token, local_files_only=local_only))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None
        except GatedRepoError:
            raise StaError(f"{repo_id} is gated: accept its terms on the Hub and pass --token or log in") from None
        except RepositoryNotFoundError:
            raise StaError(f"no Hub repository {repo_id} (or it is private: pass --token)") from None
        except RevisionNotFoundError:
            raise StaError(f"{repo_id} has no revision {revision!r}") from None
        except OSError as e:
            raise StaError(f"cannot download {filename} from {repo_id}: {e}") from None

    return fetch


def _hub_weights(fetch, repo_id: str, where: str) -> list[Path] | None:
    for name in WEIGHT_NAMES:
        p = fetch(name)
        if p is None:
            continue
        if name.endswith(".index.json"):
            for shard in sorted(set(_read_json(p).get("weight_map", {}).values())):
                if fetch(shard) is None:
                    raise StaError(f"{repo_id}: shard {shard} is not available {where}")
        return _expand_index(p)
    return None


def hub_source(repo_id: str, spec: str, revision: str | None = None, token: str | bool | None = None) -> Source:
    """Fetch (or find in the Hugging Face cache) a repo's config and weights with huggingface_hub.

    Without network (and without HF_HUB_OFFLINE) a repo complete in the cache is used as it is; one
    that is not fails at once with one line.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    unreachable = None if offline else hub_unreachable()
    fetch = _hub_fetcher(repo_id, revision, token, local_only=offline or unreachable is not None)
    where = "in the Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "on the Hub or in the cache"
    config = fetch("config.json")
    weights = _hub_weights(fetch, repo_id, where)
    missing = ([] if config else ["config.json"]) + ([] if weights else ["model.safetensors or pytorch_model.bin"])
    if missing and unreachable:
        raise StaError(
            f"the Hub is unreachable ({unreachable}) and {repo_id} is not in the local cache; "
            "connect to the network, or set HF_HUB_OFFLINE=1 to use the local cache only"
        )
    if missing:
        hint = " (download it once with network access: hf download " + repo_id + ")" if offline else ""
        raise StaError(f"{repo_id}: {' and '.join(missing)} not found {where}{hint}")
    if unreachable:
        log.warning(
            f"the Hub is unreachable ({unreachable}): using {repo_id} from the local cache "
            "(set HF_HUB_OFFLINE=1 to skip this check)"
        )
    pre = fetch("preprocessor_config.json")
    return Source(
        spec=spec,
        name=repo_id.split("/")[-1],
        weights=weights,
        config=_read_json(config),
        preprocessor=_read_json(pre) if pre else None,
        hub={"repo_id": repo_id, "revision": revision or "main"},
    )


def cache_dir() -> Path:
    """Where downloaded weight files live: $STA_CACHE, else $XDG_CACHE_HOME/sta, else ~/.cache/sta."""
    if os.environ.get("STA_CACHE"):
        return Path(os.environ["STA_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "sta"


_SHA_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")  # torchvision-style names: swin3d_t-7615ae03.pth


def url_source(url: str, spec: str) -> Source:
    """A weights file behind a plain URL (not a Hub repo), downloaded once into cache_dir() with progress.

    A sha256 prefix in the file name is checked after download. Offline (STA_OFFLINE or
    HF_HUB_OFFLINE set, or no network) and not cached: one clear StaError.
    """
    from urllib.error import URLError

    name = url.rsplit("/", 1)[-1]
    path = cache_dir() / name
    if not path.is_file():
        offline = any(
            os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
            for v in ("STA_OFFLINE", "HF_HUB_OFFLINE")
        )
        if offline:
            raise StaError(
                f"{name} is not in the cache ({path.parent}) and downloads are off (STA_OFFLINE/HF_HUB_OFFLINE); fetch {url} into it"
            )
        m = _SHA_PREFIX.search(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Writes to a temporary file next to `path` and renames it when complete (and verified).
            torch.hub.download_url_to_file(url, str(path), hash_prefix=m.group(1) if m else None, progress=True)
        except RuntimeError as e:  # hash mismatch
            raise StaError(f"download of {url} is corrupt: {str(e).strip().splitlines()[0]}") from None
        except (URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise StaError(
                f"{name} is not in the cache ({path.parent}) and cannot be downloaded from {url}: {reason}"
            ) from None
    return Source(spec=spec, name=path.stem, weights=[path])


def resolve(
    spec: str, revision: str | None = None, token: str | bool | None = None, arch: ArchOverrides | None = None
) -> Source:
    """alias | local folder or file | Hub repo id -> Source; `arch` (explicit input size, heads,
    normalisation) travels with it to the builder."""
    source = _resolve(spec, revision, token)
    source.arch = arch or ArchOverrides()
    return source


def _resolve(spec: str, revision: str | None, token: str | bool | None) -> Source:
    alias = ALIASES.get(spec)
    if alias is not None:
        if alias.packaged:
            src = local_source(alias.path, spec)
        elif alias.is_url:
            src = url_source(alias.source, spec)
        else:
            src = hub_source(alias.source, spec, revision, token)
        src.alias, src.name = alias, alias.name
        return src
    path = Path(spec).expanduser()
    if path.exists():
        return local_source(path, spec)
    if _REPO_ID.match(spec) and not spec.startswith((".", "/")) and path.suffix not in WEIGHT_SUFFIXES:
        return hub_source(spec, spec, revision, token)
    close = difflib.get_close_matches(spec, ALIASES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise StaError(f"unknown model {spec!r}: not an alias (see `sta models`), an existing path, or a Hub repo id{hint}")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """Original training checkpoints keep the state dict under 'module', 'model' or 'state_dict'."""
    if isinstance(obj, dict):
        for key in ("module", "model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return tensors
    raise StaError(f"{path} holds no state dict (looked at the top level and under 'module', 'model', 'state_dict')")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UNSAFE_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")
_WEIGHTS_ONLY_DETAIL = re.compile(r"WeightsUnpickler error: ([^\n]+)")


def _first_line(e: Exception) -> str:
    """An exception's first line without terminal escapes (torch's messages carry bold markers and advice)."""
    text = _ANSI.sub("", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (protocol >= 2: 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise StaError(f"cannot read {path}: {e.strerror or e}") from None
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """One weights file -> state dict on the CPU, without executing code from it.

    Memory: each tensor is held once. safetensors files are read with pread, not mapped (a mapping's
    pages would count against the process on top of the copies); zip-format PyTorch files are mapped
    read-only-private by `torch.load(mmap=True)`, so what is never touched (an optimizer's state in
    a training checkpoint) is never read. Inside `sharing_weights`, a tensor equal to one the caller
    already holds is that tensor.
    """
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if not _looks_like_torch_file(path):
        raise StaError(f"{path} is not a checkpoint: neither a PyTorch file (zip archive or pickle) nor safetensors")
    try:
        # Its warnings (an unusual pickle protocol, ...) are about the file sta is judging here.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        text = _ANSI.sub("", str(e))
        if m := _UNSAFE_GLOBAL.search(text):
            raise StaError(
                f"{path} is not plain weights: it holds a Python object ({m.group(1)}) whose unpickling "
                "could run code; refusing to load it"
            ) from None
        if "Weights only load failed" in text:  # torch's text goes on with advice sta must not pass on
            m = _WEIGHTS_ONLY_DETAIL.search(text)
            raise StaError(
                f"{path} is not plain weights; refusing to load it ({m.group(1).strip() if m else 'the safe unpickler rejected it'})"
            ) from None
        raise StaError(f"{path} is not a checkpoint (unreadable pickle: {_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError, IndexError, KeyError) as e:
        raise StaError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {_first_line(e)}"
        ) from None
    return {k: _shared(k, v) for k, v in _unwrap(obj, path).items()}


def _is_zip(path: Path) -> bool:
    """torch.load can map only the zip format (torch >= 1.6); the legacy pickle format is read whole."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        try:
            handle = safe_open(path, framework="pt", backend="pread")
        except TypeError:  # safetensors < 0.8 has no pread backend: it maps the file
            handle = safe_open(path, framework="pt")
        with handle as f:
            return {k: _shared(k, f.get_tensor(k)) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise StaError(f"{path} is not a readable safetensors file (corrupt or truncated?): {_first_line(e)}") from None


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        part = read_weights(f)
        twice = sorted(sd.keys() & part.keys())
        if twice:  # a stale shard beside the current ones: which copy is meant is not ours to guess
            more = f" and {len(twice) - 1} more" if len(twice) > 1 else ""
            raise StaError(f"{f.name} holds {twice[0]}{more} again, which an earlier weights file already holds")
        sd.update(part)
    return without_wrapper_prefix(sd)


# What a wrapper puts before every key of the network it wraps: (Distributed)DataParallel,
# torch.compile, and a training module holding the network as `.model` (Lightning and the like).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def without_wrapper_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with wrapper prefixes that every key carries removed (`module._orig_mod.x` -> `x`).
    No layout sta reads starts all its keys with one of them."""
    while sd and (prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)):
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


# --- holding weights once ---------------------------------------------------------------------------

_SHARED: ContextVar[dict[str, torch.Tensor] | None] = ContextVar("sta_shared_weights", default=None)


@contextmanager
def sharing_weights(tensors: dict[str, torch.Tensor]):
    """While active, a tensor read from a file that is bitwise equal to `tensors[same key]` is
    returned as that tensor: reloading a model just written (to check the file) costs no second
    copy of its weights, and a tensor that differs is still read as it is in the file."""
    token = _SHARED.set({k: v.detach() for k, v in tensors.items()})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _shared(key: str, t: torch.Tensor) -> torch.Tensor:
    known = (_SHARED.get() or {}).get(key)
    return known if known is not None and _same_bytes(known, t) else t


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (torch.equal would call 0.0 and -0.0 equal, and NaN unequal to itself)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


@contextmanager
def empty_parameters():
    """Build modules with their parameters on the meta device: no memory and no random
    initialisation for weights a checkpoint replaces at once (`load_state_dict(assign=True)`).
    Buffers (computed tables such as a sinusoid position table) are built as usual."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def owned(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a compact copy if it is a view into a larger storage (a slice of a fused tensor):
    a parameter assigned from a view would keep the whole storage alive, and safetensors refuses
    to save tensors that share memory."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)
