"""`sta eval`: accuracy of the unpruned model and of STA settings on a labelled video set.

Pipeline: parse and validate the dataset (every file exists, every label is known) before any work;
decode each video's T x S views once, in DataLoader worker processes; run the unpruned model and
every requested r1 on the same decoded views; average the softmax over a video's views (VideoMAE's
test protocol); stream one JSON line per video to OUT/predictions.jsonl; summarise at the end into
OUT/summary.json.

Determinism: videos are grouped into fixed chunks by their index in the dataset (a chunk is what
one forward pass sees), and chunks are dealt round-robin to the ranks. A video's logits therefore
do not depend on the number of processes or on what an earlier interrupted run finished: a CPU
matmul's result for one sample can change with the other samples in its batch, so batches must not.

Scale-out: under torchrun (WORLD_SIZE > 1 in the environment) the process group is initialised
from the environment, NCCL on GPU and gloo on CPU, each rank on cuda:LOCAL_RANK when CUDA is
available. Ranks advance in lockstep, one chunk per step; after each step rank 0 gathers the new
predictions and appends them to OUT. Only rank 0 touches OUT.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import __version__
from .errors import StaError
from .flops import FLOPS_LABEL, gflops
from .io import outputs
from .io import video as video_io
from .pruning import STAConfig
from .runtime.loading import paper_r1, sta_config

PATH_COLUMNS = ("path", "video", "video_path", "file", "filename", "clip")
LABEL_COLUMNS = ("label", "label_id", "class", "class_name", "category", "action")
RUN_FILE, PREDICTIONS_FILE, SUMMARY_FILE = "run.json", "predictions.jsonl", "summary.json"
TIMING_FILE = ".timing.json"  # forward time per setting, accumulated over resumed runs
RUN_FORMAT = "sta-eval"


# --- options ----------------------------------------------------------------------------------------


def parse_views(text: str | Sequence[int]) -> tuple[int, int]:
    """'5x3' -> (5 temporal clips, 3 spatial crops)."""
    return video_io.parse_views(text if isinstance(text, str) else tuple(text))


def default_r1s(model: nn.Module) -> list[int]:
    """Half the paper's setting and the paper's setting, scaled to the model (ViT-B: 32, 64)."""
    full = paper_r1(model)
    return sorted({max(1, round(full / 2)), full})


def parse_r1_list(text: str | Sequence[int] | None) -> list[int] | None:
    """'32,64' -> [0, 32, 64]: 0 (the unpruned reference) always comes first; None stays None."""
    if text is None:
        return None
    items = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(v) for v in text]
    if not items or not all(p.isdigit() for p in items):
        raise StaError(f"--r1 must be a comma-separated list of non-negative integers, got {text!r}")
    return sorted({0, *(int(p) for p in items)})


# --- dataset ------------------------------------------------------------------------------------------


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


# --- decoding -----------------------------------------------------------------------------------------


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


# --- distributed ----------------------------------------------------------------------------------------


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owned: bool = False  # we initialised the process group, so we tear it down

    @classmethod
    def from_env(cls, device: str | None = None) -> Dist:
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device not in (None, "cpu", "cuda"):
            raise StaError(f"--device must be cpu or cuda, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise StaError("--device cuda: CUDA is not available on this machine")
        cuda = torch.cuda.is_available() and device != "cpu"
        dev = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(dev)
        if world <= 1:
            return cls(device=dev)
        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, dev, owned)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False

    def all_gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj) -> list | None:
        """Rank 0 gets every rank's object (in rank order), the others None."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, fn):
        """Run fn on every rank; if it raises StaError anywhere, raise the lowest rank's error everywhere
        (so a bad input stops every rank with the same message instead of leaving some waiting)."""
        try:
            result, error = fn(), None
        except StaError as e:
            result, error = None, str(e)
        errors = [e for e in self.all_gather(error) if e is not None]
        if errors:
            raise StaError(errors[0])
        return result


# --- output folder --------------------------------------------------------------------------------------


class Progress:
    """What evaluate() reports while it works; the CLI supplies a rich progress bar."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def log(self, message: str) -> None: ...

    def stop(self) -> None: ...


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


def _is_eval_run(run_file: Path) -> bool:
    try:
        return json.loads(run_file.read_text()).get("format") == RUN_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def prepare_out(out: Path, run: dict, force: bool) -> None:
    """Create OUT or check that it holds a run of the same evaluation (rank 0 only)."""
    if out.exists() and not out.is_dir():
        raise StaError(f"{out} exists and is not a folder")
    run_file = out / RUN_FILE
    if out.is_dir() and force and any(out.iterdir()) and not _is_eval_run(run_file):
        outputs.check_folder_target(out, force=True)  # raises: what is there, and that sta leaves it alone
    if out.is_dir() and force:
        for name in (RUN_FILE, PREDICTIONS_FILE, SUMMARY_FILE, TIMING_FILE):
            (out / name).unlink(missing_ok=True)
    elif run_file.is_file():
        try:
            old = json.loads(run_file.read_text())
        except (OSError, ValueError) as e:
            raise StaError(f"{run_file} is unreadable ({e}); pass --force to start over") from None
        diff = _differences(old, run)
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
    """Finished videos of an earlier run, by index. A line cut short by an interruption is dropped
    (and the file rewritten without it, so new lines are appended to whole lines only)."""
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
        outputs.write_text(path, "".join(outputs.dumps(records[i], indent=None) + "\n" for i in sorted(records)))
    return records


# --- inference ------------------------------------------------------------------------------------------


def setting_key(r1: int) -> str:
    return str(r1)


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@torch.no_grad()
def infer_chunk(
    model: nn.Module, items, configs: list[STAConfig], batch: int, device, timing: dict, precision: str = "fp32"
) -> list[dict]:
    """Predictions for one decoded chunk: per video and setting, the top-5 of the mean softmax over its views."""
    ok = [(i, v) for i, v, _, _ in items if v is not None]
    records = {i: {"index": i, "error": e} for i, v, e, _ in items if v is None}
    if ok:
        x = torch.cat([v for _, v in ok]).to(device, non_blocking=True)
        counts = [v.shape[0] for _, v in ok]
        preds = {i: {} for i, _ in ok}
        for cfg in configs:
            model.set_sta(cfg)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            dtype = PRECISIONS[precision]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = [model(x[s : s + batch]) for s in range(0, len(x), batch)]
            probs = torch.cat(logits).float().softmax(-1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = timing.setdefault(setting_key(cfg.r1), {"clips": 0, "seconds": 0.0})
            t["clips"] += len(x)
            t["seconds"] += time.perf_counter() - t0
            k = min(5, probs.shape[-1])
            for (i, _), p in zip(ok, probs.split(counts)):
                top = p.mean(0).topk(k)
                preds[i][setting_key(cfg.r1)] = {
                    "top5": top.indices.tolist(),
                    "prob": [round(v, 6) for v in top.values.tolist()],
                }
        for (i, _), n in zip(ok, counts):
            records[i] = {"index": i, "views": n, "predictions": preds[i]}
    for i, _, _, warned in items:
        if warned:
            records[i]["warnings"] = warned
    return [records[i] for i, _, _, _ in items]


# --- summary --------------------------------------------------------------------------------------------


def summarise(records: dict[int, dict], settings: list[dict], ref_key: str) -> dict:
    """Top-1, top-5 and agreement with the unpruned model per setting, from the per-video predictions."""
    good = [records[i] for i in sorted(records) if "error" not in records[i]]
    rows = []
    for s in settings:
        key = s["key"]
        top1 = sum(r["predictions"][key]["top5"][0] == r["label"] for r in good)
        top5 = sum(r["label"] in r["predictions"][key]["top5"] for r in good)
        agree = sum(r["predictions"][key]["top5"][0] == r["predictions"][ref_key]["top5"][0] for r in good)
        n = len(good)
        rows.append(
            {
                **s,
                "top1": top1 / n if n else None,
                "top5": top5 / n if n else None,
                "agreement_with_unpruned": agree / n if n else None,
                "counts": {"videos": n, "top1_correct": top1, "top5_correct": top5, "agree": agree},
            }
        )
    return {"settings": rows}


# --- the command ----------------------------------------------------------------------------------------


def _model_identity(source, model) -> dict:
    return {
        "spec": source.hub["repo_id"]
        if source.hub
        else (source.alias.name if source.alias else str(Path(source.spec).resolve())),
        "revision": source.hub["revision"] if source.hub else None,
        "name": source.name,
        "weights": [[p.name, p.stat().st_size] for p in source.weights],
        "labels": list(model.labels),
    }


def default_out(source_name: str, dataset: Path) -> Path:
    return Path(f"eval-{source_name}-{dataset.stem or dataset.resolve().name}")


def evaluate(
    dataset: str | Path,
    model: str | Path,
    r1: str | Sequence[int] | None = None,
    *,
    views: str | Sequence[int] = "1x1",
    batch: int = 8,
    workers: int = 2,
    out: str | Path | None = None,
    root: str | Path | None = None,
    force: bool = False,
    device: str | None = None,
    precision: str = "fp32",
    revision: str | None = None,
    token: str | bool | None = None,
    arch=None,  # models.ArchOverrides: explicit input size, heads, normalisation
    progress: Progress | None = None,
    compile: bool = False,
    **sta_options,
) -> dict:
    """Evaluate `model` unpruned and at each r1 on `dataset`; returns the summary (also OUT/summary.json).

    r1: list or comma-separated string; 0 (unpruned) is always added. Default: an artifact's own r1,
    else 32 and 64. Other keyword arguments are STAConfig options applied to every pruned setting.
    Run under torchrun to shard the work over processes; every rank returns the same summary.
    compile: run the model through torch.compile (sta_cli.compiled), compiled for every setting
    before the first video so that clips/s measures the compiled model, not the compiler.
    """
    from .io.checkpoints import resolve
    from .models import build_from_source

    progress = progress or Progress()
    n_t, n_s = parse_views(views)
    r1s = parse_r1_list(r1)
    if batch < 1 or workers < 0:
        raise StaError("--batch must be at least 1 and --workers at least 0")
    if precision not in PRECISIONS:
        raise StaError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dist_ctx = Dist.from_env(device)
    held = contextlib.ExitStack()  # rank 0's hold on OUT
    try:
        # Everything that can be wrong with the input is found here, before any decoding.
        raws = dist_ctx.agree(lambda: read_entries(dataset, root))

        def load():
            source = resolve(str(model), revision=revision, token=token, arch=arch)
            base = STAConfig.from_dict(source.sta) if source.is_artifact else None
            net = build_from_source(source, STAConfig())
            chosen = r1s if r1s is not None else parse_r1_list([base.r1] if base and base.r1 else default_r1s(net))
            # chosen[0] == 0: the reference, no pruning at all
            configs = [STAConfig()] + [sta_config(base, v, **sta_options) for v in chosen[1:]]
            for cfg in configs:
                net.set_sta(cfg)  # validates each r1 against the token grid
                if compile:
                    from .compiled import check_compilable

                    check_compilable(cfg)
            return source, net, configs

        source, net, configs = dist_ctx.agree(load)
        entries = dist_ctx.agree(lambda: map_labels(raws, net.labels, dataset))
        out_dir = Path(out) if out is not None else default_out(source.name, Path(dataset))
        settings = []
        for cfg in configs:
            net.set_sta(cfg)
            settings.append(
                {
                    "key": setting_key(cfg.r1),
                    "r1": cfg.r1,
                    "sta": cfg.to_dict(),
                    "tokens": list(getattr(net, "tokens_per_stage", [])),
                    "gflops_per_clip": round(gflops(net), 4),
                }
            )
        run = {
            "format": RUN_FORMAT,
            "dataset": {
                "path": str(Path(dataset).resolve()),
                "videos": len(entries),
                "sha256": dataset_digest(entries),
            },
            "model": _model_identity(source, net),
            "settings": [{k: s[k] for k in ("key", "sta")} for s in settings],
            "views": [n_t, n_s],
            "precision": precision,
            "preprocessing": dict(net.preprocessing),
        }
        keys = [s["key"] for s in settings]

        def check_out():
            held.enter_context(outputs.exclusive(out_dir))  # until the summary is written
            prepare_out(out_dir, run, force)
            return sorted(read_predictions(out_dir, entries, keys))

        done = set(_rank0_agree(dist_ctx, check_out))

        net.to(dist_ctx.device)
        runner = _compiled(net, configs, batch, dist_ctx.device) if compile else net
        per_chunk = max(1, batch // (n_t * n_s))
        pending = [c for c in make_chunks(len(entries), per_chunk) if not all(i in done for i in c)]
        mine = pending[dist_ctx.rank :: dist_ctx.world]
        steps = math.ceil(len(pending) / dist_ctx.world)
        loader = torch.utils.data.DataLoader(
            ChunkDataset(entries, mine, net.preprocessing, (n_t, n_s)),
            batch_size=None,
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            pin_memory=dist_ctx.device.type == "cuda",
        )
        timing: dict = {}
        failed_now = 0
        t_start = time.perf_counter()
        writer = open(out_dir / PREDICTIONS_FILE, "a") if dist_ctx.main else None
        already = len(done)
        if dist_ctx.main:
            progress.start(len(entries), already)
        try:
            it = iter(loader)
            for _ in range(steps):
                items = next(it, None)
                new = infer_chunk(runner, items, configs, batch, dist_ctx.device, timing, precision) if items else []
                gathered = dist_ctx.gather(new)
                if not dist_ctx.main:
                    continue
                count = 0
                for rec in (r for rank_records in gathered for r in rank_records):
                    i = rec["index"]
                    if i in done:
                        continue  # a partly finished chunk was recomputed: keep the earlier lines
                    e = entries[i]
                    line = {
                        "index": i,
                        "path": e.name,
                        "label": e.label,
                        **{k: v for k, v in rec.items() if k != "index"},
                    }
                    writer.write(outputs.dumps(line, indent=None) + "\n")
                    writer.flush()
                    done.add(i)
                    count += 1
                    if "error" in rec:
                        failed_now += 1
                        progress.log(_about(e, rec["error"], "cannot read "))
                    for w in rec.get("warnings", []):
                        progress.log(_about(e, w))
                progress.advance(count)
        finally:
            if writer is not None:
                writer.close()
            if dist_ctx.main:
                progress.stop()
        wall = time.perf_counter() - t_start
        rates = dist_ctx.gather(timing)

        summary = None
        if dist_ctx.main:
            summary = _finish(
                out_dir,
                entries,
                keys,
                settings,
                rates,
                run,
                net,
                (n_t, n_s),
                dist_ctx.world,
                wall,
                len(done) - already,
                failed_now,
            )
        return dist_ctx.broadcast(summary)
    finally:
        held.close()
        dist_ctx.close()


def _compiled(net: nn.Module, configs: list[STAConfig], batch: int, device) -> nn.Module:
    """`net` compiled, with a graph for every setting at the full batch size built before timing starts."""
    from .compiled import compile_model, warm_up
    from .flops import input_shape_of

    x = torch.zeros(input_shape_of(net, batch), device=device)
    compiled = compile_model(net)
    warm_up(compiled, x, {str(i): c for i, c in enumerate(configs)})
    return compiled


def _about(entry: Entry, message: str, prefix: str = "") -> str:
    """A message about a video, naming it once (decoding errors usually name the file already)."""
    named = str(entry.path) in message or Path(entry.name).name in message
    return message if named else f"{prefix}{entry.name}: {message}"


def _rank0_agree(ctx: Dist, fn):
    """fn runs on rank 0 only (it touches OUT); its StaError or result reaches every rank."""
    result, error = None, None
    if ctx.main:
        try:
            result = fn()
        except StaError as e:
            error = str(e)
    result, error = ctx.broadcast((result, error))
    if error is not None:
        raise StaError(error)
    return result


def _merge_timing(out_dir: Path, rates: list[dict]) -> dict:
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


def _finish(out_dir, entries, keys, settings, rates, run, net, views, world, wall, new_videos, failed_now) -> dict:
    """Rank 0: sort predictions.jsonl by video, write summary.json."""
    records = read_predictions(out_dir, entries, keys)
    outputs.write_text(
        out_dir / PREDICTIONS_FILE, "".join(outputs.dumps(records[i], indent=None) + "\n" for i in sorted(records))
    )
    timing = _merge_timing(out_dir, rates)
    summary = summarise(records, settings, keys[0])
    per_video = views[0] * views[1]
    for row in summary["settings"]:
        t = timing.get(row["key"])
        row["gflops_per_video"] = round(row["gflops_per_clip"] * per_video, 4)
        row["clips_per_s"] = round(t["clips"] / t["seconds"], 3) if t and t["seconds"] > 0 else None
        row["timed_clips"] = t["clips"] if t else 0
    failed = [
        {"index": i, "path": records[i]["path"], "error": records[i]["error"]}
        for i in sorted(records)
        if "error" in records[i]
    ]
    return_value = {
        "sta_version": __version__,
        "dataset": run["dataset"],
        "model": {**run["model"], "family": net.family, "params": sum(p.numel() for p in net.parameters())},
        "views": f"{views[0]}x{views[1]}",
        "views_per_video": per_video,
        "precision": run["precision"],
        "flops_convention": FLOPS_LABEL,
        "videos": {"total": len(entries), "evaluated": len(records) - len(failed), "failed": len(failed)},
        "failed": failed,
        **summary,
        "this_run": {
            "world_size": world,
            "videos": new_videos,
            "wall_seconds": round(wall, 3),
            "videos_per_s": round(new_videos / wall, 3) if new_videos and wall > 0 else None,
            "new_failures": failed_now,
        },
        "output": str(out_dir),
    }
    outputs.write_text(out_dir / SUMMARY_FILE, outputs.dumps(return_value) + "\n")
    return return_value
