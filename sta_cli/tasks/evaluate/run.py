"""`sta eval`: accuracy of the unpruned model and of STA settings on a labelled video set.

Pipeline: parse and validate the dataset (every file exists, every label is known) before any work
(dataset.py); decode each video's T x S views once, in DataLoader worker processes; run the
unpruned model and every requested r1 on the same decoded views; average the softmax over a
video's views (VideoMAE's test protocol); stream one JSON line per video to OUT/predictions.jsonl
(store.py); summarise at the end into OUT/summary.json (summary.py).

Scale-out: under torchrun (WORLD_SIZE > 1 in the environment) chunks of videos are dealt
round-robin to the ranks (dist.py); every rank returns the same summary.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ...errors import StaError
from ...flops import gflops
from ...io import outputs
from ...io import video as video_io
from ...io.artifact import file_record
from ...io.checkpoints import Source, resolve
from ...models import build_from_source
from ...models.overrides import ArchOverrides, log
from ...pruning import STAConfig
from ...runtime.loading import default_model, paper_r1, sta_config
from ...runtime.predict import count_params
from .dataset import ChunkDataset, Entry, _worker_init, dataset_digest, make_chunks, map_labels, read_entries
from .dist import Dist
from .store import PREDICTIONS_FILE, RUN_FORMAT, default_out, finished, prepare_out, read_predictions
from .summary import EvalModel, EvalSummary, SettingRow, ThisRun, finish

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


class Progress:
    """What evaluate() reports while it works; the CLI supplies a rich progress bar."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def log(self, message: str) -> None: ...

    def stop(self) -> None: ...


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@torch.no_grad()
def infer_chunk(
    model: nn.Module, items, configs: list[STAConfig], batch: int, device, timing: dict, precision: str = "fp32"
) -> list[dict]:
    """Predictions for one decoded chunk: per video and setting, the top-5 of the mean softmax over its views."""
    ok = [(i, v) for i, v, _, _, _ in items if v is not None]
    records = {i: {"index": i, "error": e} for i, v, e, _, _ in items if v is None}
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
    for i, _, _, warned, file in items:
        records[i] = {"index": i, "file": file, **records[i]}  # what resuming checks the file against
        if warned:
            records[i]["warnings"] = warned
    return [records[i] for i, _, _, _, _ in items]


@dataclass
class EvalRequest:
    """What `evaluate` was asked, checked before anything is loaded."""

    dataset: Path
    model: str
    r1s: list[int] | None
    views: tuple[int, int]
    batch: int
    workers: int
    out: Path | None
    root: Path | None
    force: bool
    precision: str
    revision: str | None
    token: str | bool | None
    arch: ArchOverrides | None
    compile: bool
    sta_options: dict


@dataclass
class _Job:
    """An evaluation ready to run: the videos, the model, its settings, OUT and what it holds already."""

    entries: list[Entry]
    net: nn.Module
    configs: list[STAConfig]
    settings: list[SettingRow]
    run: dict  # run.json
    out: Path
    done: set[int]


def setting_key(r1: int) -> str:
    return str(r1)


def evaluate(
    dataset: str | Path,
    model: str | Path | None = None,
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
    arch: ArchOverrides | None = None,
    progress: Progress | None = None,
    compile: bool = False,
    **sta_options,
) -> EvalSummary:
    """Evaluate `model` unpruned and at each r1 on `dataset`; returns the summary (also OUT/summary.json).

    r1: list or comma-separated string; 0 (unpruned) is always added. Default: an artifact's own r1,
    else `default_r1s` (half the paper's setting and the paper's setting, scaled to the model).
    Other keyword arguments are STAConfig options applied to every pruned setting. batch: clips per
    forward pass, as in `sta profile`. device: the one rule of runtime.device (auto: cuda:LOCAL_RANK
    under torchrun when a GPU is visible). Run under torchrun to shard the work over processes;
    every rank returns the same summary. compile: run the model through torch.compile
    (sta_cli.compiled), compiled for every setting before the first video so that clips/s measures
    the compiled model, not the compiler. model None: the artifact `sta prune` left in the current
    folder, else the packaged demo (runtime.loading.default_model).
    """
    arch = ArchOverrides.merged(arch, sta_options)
    model = default_model(model, demo=True, say=log.info)
    if model is None:
        raise StaError(
            "no model given, no artifact in the current folder and no packaged demo: pass --model (see `sta models`)"
        )
    request = EvalRequest(
        Path(dataset), str(model), None, parse_views(views), batch, workers,
        Path(out) if out is not None else None, Path(root) if root is not None else None, force, precision,
        revision, token, arch, compile, sta_options,
    )  # fmt: skip
    request.r1s = parse_r1_list(r1)
    if batch < 1 or workers < 0:
        raise StaError("--batch must be at least 1 and --workers at least 0")
    if precision not in PRECISIONS:
        raise StaError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    progress = progress or Progress()
    ctx = Dist.from_env(device)
    held = contextlib.ExitStack()  # rank 0's hold on OUT
    try:
        return _run(request, ctx, held, progress)
    finally:
        held.close()
        ctx.close()


def _run(request: EvalRequest, ctx: Dist, held: contextlib.ExitStack, progress: Progress) -> EvalSummary:
    """Load, infer every video at every setting, and (rank 0) write the summary; every rank returns it."""
    job = _prepare(request, ctx, held)
    runner = _compiled(job.net, job.configs, request.batch, ctx.device) if request.compile else job.net
    t_start = time.perf_counter()
    timing, new_videos, failed_now = _infer(request, job, runner, ctx, progress)
    wall = time.perf_counter() - t_start
    rate = round(new_videos / wall, 3) if new_videos and wall > 0 else None
    this_run = ThisRun(ctx.world, new_videos, round(wall, 3), rate, failed_now)
    rates = ctx.gather(timing)
    summary = None
    if ctx.main:
        identity = EvalModel(**job.run["model"], family=job.net.card.family, params=count_params(job.net))
        summary = finish(job.out, job.entries, job.settings, rates, job.run, identity, this_run)
    return ctx.broadcast(summary)


def _prepare(req: EvalRequest, ctx: Dist, held: contextlib.ExitStack) -> _Job:
    """Everything that can be wrong with the input is found here, before any decoding."""
    raws = ctx.agree(lambda: read_entries(req.dataset, req.root))
    source, net, configs = ctx.agree(lambda: _load(req))
    entries = ctx.agree(lambda: map_labels(raws, net.labels, req.dataset))
    out_dir = req.out if req.out is not None else default_out(source.name, req.dataset)
    settings = []
    for cfg in configs:
        net.set_sta(cfg)
        tokens = list(net.tokens_per_stage)
        settings.append(SettingRow(setting_key(cfg.r1), cfg.r1, cfg.to_dict(), tokens, round(gflops(net), 4)))
    run = _run_record(req, source, net, entries, settings)
    keys = [s.key for s in settings]

    def check_out():
        held.enter_context(outputs.exclusive(out_dir))  # until the summary is written
        prepare_out(out_dir, run, req.force)
        return sorted(finished(read_predictions(out_dir, entries, keys), entries))

    done = set(ctx.rank0(check_out))
    net.to(ctx.device)
    return _Job(entries, net, configs, settings, run, out_dir, done)


def _load(req: EvalRequest) -> tuple[Source, nn.Module, list[STAConfig]]:
    """The model and its settings: 0 (the reference, no pruning at all) first, each r1 checked."""
    source = resolve(req.model, revision=req.revision, token=req.token, arch=req.arch)
    base = STAConfig.from_dict(source.sta) if source.is_artifact else None
    net = build_from_source(source, STAConfig())
    chosen = req.r1s if req.r1s is not None else parse_r1_list([base.r1] if base and base.r1 else default_r1s(net))
    sta_config(base, None, **req.sta_options)  # the options are checked even when only r1 = 0 is asked for
    configs = [STAConfig()] + [sta_config(base, v, **req.sta_options) for v in chosen[1:]]
    for cfg in configs:
        net.set_sta(cfg)  # validates each r1 against the token grid
        if req.compile:
            from ...compiled import check_compilable

            check_compilable(cfg)
    return source, net, configs


def _weights_identity(path: Path) -> list:
    """[name, bytes, sha256]: the checksum, not just name and size, since fine-tuned weights of the same
    architecture have the same size and resuming would report the old weights' results as the new ones'."""
    record = file_record(path)
    return [path.name, record["bytes"], record["sha256"]]


def _run_record(req: EvalRequest, source: Source, net: nn.Module, entries: list[Entry], settings) -> dict:
    """run.json: what this evaluation is; a re-run into the same OUT resumes only the same evaluation."""
    identity = {
        "spec": source.hub["repo_id"]
        if source.hub
        else (source.alias.name if source.alias else str(Path(source.spec).resolve())),
        "revision": source.hub["revision"] if source.hub else None,
        "name": source.name,
        "weights": [_weights_identity(p) for p in source.weights],
        "labels": list(net.labels),
        # the architecture as built: same weights with other heads (config.json, --num-heads) are another model
        "config": net.cfg.to_dict(),
    }
    return {
        "format": RUN_FORMAT,
        "dataset": {"path": str(req.dataset.resolve()), "videos": len(entries), "sha256": dataset_digest(entries)},
        "model": identity,
        "settings": [{"key": s.key, "sta": s.sta} for s in settings],
        "views": list(req.views),
        "precision": req.precision,
        "preprocessing": dict(net.preprocessing),
    }


def _infer(req: EvalRequest, job: _Job, runner: nn.Module, ctx: Dist, progress: Progress) -> tuple[dict, int, int]:
    """This rank's share of the videos not done yet, in lockstep with the other ranks; rank 0 appends
    every rank's new predictions to OUT. -> (forward timing per setting, videos done, new failures)."""
    per_chunk = max(1, req.batch // (req.views[0] * req.views[1]))
    pending = [c for c in make_chunks(len(job.entries), per_chunk) if not all(i in job.done for i in c)]
    loader = torch.utils.data.DataLoader(
        ChunkDataset(job.entries, pending[ctx.rank :: ctx.world], job.net.preprocessing, req.views),
        batch_size=None,
        num_workers=req.workers,
        worker_init_fn=_worker_init if req.workers else None,
        pin_memory=ctx.device.type == "cuda",
    )
    timing: dict = {}
    already, failed_now = len(job.done), 0
    writer = open(job.out / PREDICTIONS_FILE, "a") if ctx.main else None
    if ctx.main:
        progress.start(len(job.entries), already)
    try:
        it = iter(loader)
        for _ in range(math.ceil(len(pending) / ctx.world)):
            items = next(it, None)
            new = infer_chunk(runner, items, job.configs, req.batch, ctx.device, timing, req.precision) if items else []
            gathered = ctx.gather(new)
            if ctx.main:
                failed_now += _append(job, [r for rank_records in gathered for r in rank_records], writer, progress)
    finally:
        if writer is not None:
            writer.close()
        if ctx.main:
            progress.stop()
    return timing, len(job.done) - already, failed_now


def _append(job: _Job, records: list[dict], writer, progress: Progress) -> int:
    """Rank 0: one line per newly finished video; returns how many of them could not be read."""
    count = failed = 0
    for rec in records:
        i = rec["index"]
        if i in job.done:
            continue  # a partly finished chunk was recomputed: keep the earlier lines of finished videos
        e = job.entries[i]
        line = {"index": i, "path": e.name, "label": e.label, **{k: v for k, v in rec.items() if k != "index"}}
        writer.write(outputs.dumps(line, indent=None) + "\n")
        writer.flush()
        job.done.add(i)
        count += 1
        if "error" in rec:
            failed += 1
            progress.log(_about(e, rec["error"], "cannot read "))
        for w in rec.get("warnings", []):
            progress.log(_about(e, w))
    progress.advance(count)
    return failed


def _compiled(net: nn.Module, configs: list[STAConfig], batch: int, device) -> nn.Module:
    """`net` compiled, with a graph for every setting at the full batch size built before timing starts."""
    from ...compiled import compile_model, warm_up
    from ...flops import input_shape_of

    x = torch.zeros(input_shape_of(net, batch), device=device)
    compiled = compile_model(net)
    warm_up(compiled, x, {str(i): c for i, c in enumerate(configs)})
    return compiled


def _about(entry: Entry, message: str, prefix: str = "") -> str:
    """A message about a video, naming it once (decoding errors usually name the file already)."""
    named = str(entry.path) in message or Path(entry.name).name in message
    return message if named else f"{prefix}{entry.name}: {message}"
