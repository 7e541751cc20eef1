"""One training loop for every stage (whole-image classifier, Mask R-CNN detector, cascade crop classifier).

A stage says what to train and how to score it (:class:`Stage`); :func:`fit` does the rest alike
for all: optimiser and schedule (:mod:`limbscan.train.optim`), gradient clipping, AMP on CUDA, an
atomic checkpoint per epoch that resumes to the same weights, ``best.pt`` by ``val_auc``,
``metrics.jsonl``, DDP under ``torchrun`` (docs/training.md, "Engine"). :func:`fit` runs named
steps (:func:`_setup`, :func:`_resume_or_seed`, :func:`_open_outputs`, :func:`_run_epoch`,
:func:`_end_epoch`); a stage without gradients goes to :func:`_fit_without_gradients`.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from limbscan.config import Config, config_to_dict
from limbscan.errors import LimbscanError
from limbscan.rundir import BEST, LAST, RunDir
from limbscan.train.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    stage_checkpoint,
    sweep_temp_files,
)
from limbscan.train.hooks import AppendMetrics, EpochEnd, Hook, PrintEpoch, SaveCheckpoints, TensorBoard
from limbscan.train.optim import build_optimizer, lr_factor, step_schedule
from limbscan.train.records import rewrite_metrics
from limbscan.utils.distributed import (  # noqa: F401  (DistInfo & co. are still importable from here)
    DistInfo,
    all_gather_objects,
    barrier,
    init_distributed,
    shutdown_distributed,
)

log = logging.getLogger(__name__)


@runtime_checkable
class Stage(Protocol):
    """What :func:`fit` needs from a scenario's stage.

    ``train_loader(epoch, rank, world_size)``: the same batches for the same (seed, epoch), each rank
    its own shard. ``train_step`` gets the batch on the model's device and the model possibly wrapped
    in DDP (call it, don't reach into it). ``validate`` gets the bare model in eval mode under
    ``no_grad`` and returns ``val_auc`` (``None`` where undefined). Optional: ``find_unused_parameters``
    for DDP, ``checkpoint_extra`` (plain values a checkpoint carries beyond the weights).
    """

    name: str
    epochs: int
    model: nn.Module

    def param_groups(self, model: nn.Module) -> list[dict]: ...

    def train_loader(self, epoch: int, rank: int, world_size: int) -> Iterable: ...

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]: ...

    def validate(self, model: nn.Module) -> dict[str, float | None]: ...


@dataclass
class FitResult:
    stage: str
    folder: Path  # out/<stage>: last.pt, best.pt
    epochs: int  # epochs completed
    best_epoch: int | None
    best_auc: float | None
    history: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)  # this call's optimiser steps (not restored on resume)

    @property
    def last_path(self) -> Path:
        return self.folder / LAST

    @property
    def best_path(self) -> Path:
        return self.folder / BEST


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor in a (nested) batch to ``device``; images [B,C,H,W] to channels-last if asked."""
    if isinstance(batch, Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


@dataclass
class Training:
    """What a stage trains with, built once by :func:`_setup`: the same for every epoch."""

    stage: Stage
    cfg: Config
    info: DistInfo
    run: RunDir
    model: nn.Module  # the bare model: validated and saved
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    steps: int  # optimiser steps per epoch, the same on every rank
    amp: bool
    channels_last: bool
    grad_clip: float
    train_model: nn.Module = field(init=False)  # what train_step calls: the model, or its DDP wrapper

    def __post_init__(self) -> None:
        self.train_model = self.model

    @property
    def folder(self) -> Path:
        return self.run.stage(self.stage.name)

    @property
    def last_path(self) -> Path:
        return self.run.last(self.stage.name)


@dataclass
class Standing:
    """How far a stage has got: restored from ``last.pt`` on resume, one record longer each epoch."""

    best_auc: float | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)

    def add(self, record: dict) -> bool:
        """Append the epoch's record; True when it is the best so far, which it then becomes: the
        first epoch, or one with an AUC that beats the best (ties keep the earlier; an undefined
        AUC never beats a defined one)."""
        self.history.append(record)
        auc = record.get("val_auc")
        improved = self.best_epoch is None or (auc is not None and (self.best_auc is None or auc > self.best_auc))
        if improved:
            self.best_auc, self.best_epoch = auc, record["epoch"]
        return improved


def fit(stage: Stage, out: str | Path, cfg: Config, resume: bool = False, progress: bool = True) -> FitResult:
    """Train ``stage`` for ``stage.epochs`` epochs; checkpoints in ``out/<stage.name>/``, log in ``out/metrics.jsonl``.

    With ``resume``, continue from ``out/<stage.name>/last.pt`` when there is one (a finished stage is
    not retrained); without it, any earlier run of this stage in ``out`` is started over.
    """
    if not getattr(stage, "needs_gradients", True):
        return _fit_without_gradients(stage, Path(out), cfg, resume, progress)
    t = _setup(stage, Path(out), cfg)
    start_epoch, standing = _resume_or_seed(t, resume)
    console = Console(stderr=True)
    hooks = _open_outputs(t, standing, start_epoch, console if progress else None)
    step_losses: list[float] = []
    try:
        _wrap_distributed(t)
        with _progress_bar(console, enabled=progress and t.info.is_main) as bar:
            for epoch in range(start_epoch, stage.epochs):
                record = _run_epoch(t, epoch, bar, hooks, step_losses)
                improved = standing.add(record)
                _end_epoch(t, record, improved, standing, hooks)
    finally:
        for hook in hooks:
            hook.close()
    return FitResult(stage.name, t.folder, len(standing.history), standing.best_epoch, standing.best_auc,
                     standing.history, step_losses)


def _setup(stage: Stage, out: Path, cfg: Config) -> Training:
    """The model on this rank's device, its optimiser, schedule (over all the stage's steps) and AMP scaler."""
    info = init_distributed()
    on_cuda = info.device.type == "cuda"
    amp = bool(cfg.train.amp) and on_cuda
    channels_last = bool(cfg.train.channels_last) and on_cuda
    model = stage.model.to(info.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(stage.param_groups(model), cfg)
    steps = _steps_per_epoch(stage, cfg, info)
    scheduler = LambdaLR(optimizer, lr_factor(cfg.train.schedule, cfg.train.warmup_steps, steps * stage.epochs))
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp)
    return Training(stage, cfg, info, RunDir(out), model, optimizer, scheduler, scaler, steps, amp, channels_last,
                    float(cfg.train.grad_clip))


def _resume_or_seed(t: Training, resume: bool) -> tuple[int, Standing]:
    """(the epoch to start at, the standing so far): with ``resume`` and a ``last.pt``, everything
    it holds restored, each rank's random generators included; otherwise epoch 0, freshly seeded."""
    stage, cfg, info, last_path = t.stage, t.cfg, t.info, t.last_path
    if not (resume and last_path.is_file()):
        seed_everything(cfg.train.seed + info.rank)
        return 0, Standing()
    ckpt = load_checkpoint(last_path, map_location=info.device)
    if ckpt.get("stage") != stage.name:
        raise LimbscanError(f"{last_path}: holds stage {ckpt.get('stage')!r}, not {stage.name!r}")
    _check_same_training_data(ckpt, cfg, last_path)
    t.model.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] and t.scaler.is_enabled():  # empty when saved without AMP (e.g. on CPU)
        t.scaler.load_state_dict(ckpt["scaler"])
    start_epoch = ckpt["epoch"]
    states = ckpt["rng"]
    if len(states) == info.world_size:
        set_rng_state(states[info.rank])
    else:
        log.warning("%s: resumed on %d process(es), checkpoint made on %d: the run will not repeat exactly",
                    stage.name, info.world_size, len(states))
        seed_everything(cfg.train.seed + 1000 * start_epoch + info.rank)
    return start_epoch, Standing(ckpt["best_auc"], ckpt["best_epoch"], list(ckpt["history"]))


def _open_outputs(t: Training, standing: Standing, start_epoch: int, console: Console | None) -> list[Hook]:
    """Rank 0 readies the stage's folder (stray temp files gone, ``metrics.jsonl`` true to the
    checkpoint) and returns its hooks; the other ranks get none. All ranks wait for rank 0."""
    hooks: list[Hook] = []
    if t.info.is_main:
        t.folder.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(t.folder)
        rewrite_metrics(t.run.metrics, t.stage.name, standing.history)
        hooks = [
            SaveCheckpoints(t.stage, t.cfg, t.model, t.optimizer, t.scheduler, t.scaler, t.info.world_size,
                            t.last_path, t.run.best(t.stage.name)),
            AppendMetrics(t.run.metrics),
        ]
        board = TensorBoard.open(t.cfg, t.run.root, t.stage.name, t.steps, purge_step=start_epoch * t.steps)
        if board is not None:
            hooks.append(board)
        if console is not None:
            hooks.append(PrintEpoch(console, t.stage.name, t.stage.epochs))
    barrier(t.info)
    return hooks


def _wrap_distributed(t: Training) -> None:
    """Under ``torchrun``, train through ``DistributedDataParallel`` (the bare model stays ``t.model``)."""
    if t.info.distributed:
        t.train_model = DistributedDataParallel(
            t.model,
            device_ids=[t.info.local_rank] if t.info.device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(t.stage, "find_unused_parameters", False)),
        )


def _progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def _run_epoch(t: Training, epoch: int, bar: Progress, hooks: list[Hook], step_losses: list[float]) -> dict:
    """Train epoch ``epoch`` (0-based) and validate: its ``metrics.jsonl`` record."""
    started = time.perf_counter()
    parts = _train_epoch(t, epoch, bar, hooks, step_losses)
    train_seconds = time.perf_counter() - started
    metrics = _validate(t.stage, t.model, t.info, t.amp)
    return {
        "stage": t.stage.name,
        "epoch": epoch + 1,
        **parts,
        **metrics,
        "lr": t.optimizer.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - started, 3),
        "train_seconds": round(train_seconds, 3),
    }


def _end_epoch(t: Training, record: dict, improved: bool, standing: Standing, hooks: list[Hook]) -> None:
    """Every rank's generator states gathered (for the checkpoint), rank 0's hooks run, all ranks in step."""
    rngs = all_gather_objects(rng_state(), t.info)
    end = EpochEnd(record, improved, standing.best_auc, standing.best_epoch, standing.history, rngs)
    for hook in hooks:  # rank 0 alone has hooks
        hook.on_epoch_end(end)
    barrier(t.info)


def _training_data(data: dict[str, Any]) -> tuple[list[str], Any]:
    """(the auxiliary folders, resolved and sorted; their batch share, which means nothing without them)."""
    folders = sorted(str(Path(p).resolve()) for p in data.get("auxiliary") or ())
    return folders, data.get("auxiliary_share") if folders else None


def _shown(data: tuple[list[str], Any]) -> str:
    return f"{', '.join(data[0])} (share {data[1]})" if data[0] else "none"


def _check_same_training_data(ckpt: dict[str, Any], cfg: Config, last_path: Path) -> None:
    """A stage resumes only on the auxiliary data it started with: one that finished without
    ``--aux DS`` and was resumed with it would be reused as it was, while the run and its bundle
    named DS among its training data."""
    before = _training_data((ckpt.get("config") or {}).get("data") or {})
    now = _training_data(config_to_dict(cfg.data))
    if before != now:
        raise LimbscanError(f"{last_path}: trained with auxiliary data {_shown(before)}, this run asks for {_shown(now)}; "
                            "a stage resumes only on the data it started with: train into a new folder "
                            "(or resume with the run's own config)")


def _fit_without_gradients(stage: Any, out: Path, cfg: Config, resume: bool, progress: bool) -> FitResult:
    """A stage fitted by ``stage.fit_model(model)`` (which sets the model's buffers and returns the
    epoch's metrics, ``val_auc`` among them), on rank 0, once: no optimiser, no loader. Its
    checkpoint is written like a trained stage's (empty optimiser state; ``last.pt`` and
    ``best.pt`` the same), so everything that loads a stage loads it. With ``resume``, a finished
    fit is kept if the stage's ``reusable(extra)`` (when it has one) finds its inputs unchanged."""
    info = init_distributed()
    run = RunDir(out)
    folder, last_path = run.stage(stage.name), run.last(stage.name)

    def result(ckpt: dict[str, Any]) -> FitResult:
        return FitResult(stage.name, folder, int(ckpt["epoch"]), ckpt["best_epoch"], ckpt["best_auc"],
                         list(ckpt["history"]))

    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        if ckpt.get("stage") != stage.name:
            raise LimbscanError(f"{last_path}: holds stage {ckpt.get('stage')!r}, not {stage.name!r}")
        reusable = getattr(stage, "reusable", None)
        if ckpt["epoch"] >= stage.epochs and (reusable is None or reusable(ckpt.get("extra") or {})):
            return result(ckpt)
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(folder)
        started = time.perf_counter()
        model = stage.model
        metrics = dict(stage.fit_model(model))
        if "val_auc" not in metrics:
            raise LimbscanError(f"{stage.name}: fit_model() must return val_auc (got {sorted(metrics)})")
        auc = metrics["val_auc"]
        record = {"stage": stage.name, "epoch": stage.epochs, **metrics,
                  "seconds": round(time.perf_counter() - started, 3)}
        payload = stage_checkpoint(stage, cfg, epoch=stage.epochs, model=model, rngs=[rng_state()], best_auc=auc,
                                   best_epoch=stage.epochs, history=[record], world_size=1)
        save_checkpoint(payload, last_path)
        save_checkpoint(payload, run.best(stage.name))
        rewrite_metrics(run.metrics, stage.name, [record])
        if progress:
            shown = "n/a" if auc is None else f"{auc:.3f}"
            Console(stderr=True).print(f"{stage.name}: fitted without gradients, val AUC {shown}, "
                                       f"{record['seconds']:.1f} s", highlight=False)
    barrier(info)
    return result(load_checkpoint(last_path))


def _train_epoch(t: Training, epoch: int, bar: Progress, hooks: list[Hook], step_losses: list[float]) -> dict[str, float]:
    """One epoch's optimiser steps, each loss checked finite and handed to the hooks; the epoch's
    mean losses (over every rank's batches)."""
    stage, model, optimizer, info, amp = t.stage, t.model, t.optimizer, t.info, t.amp
    model.train()
    totals: dict[str, float] = defaultdict(float)
    done = 0
    task = bar.add_task(f"{stage.name} {epoch + 1}/{stage.epochs}", total=t.steps,
                        loss=float("nan"), lr=optimizer.param_groups[0]["lr"])
    for step, batch in enumerate(stage.train_loader(epoch, info.rank, info.world_size)):
        if step >= t.steps:
            break
        batch = to_device(batch, info.device, t.channels_last)
        with torch.autocast(info.device.type, enabled=amp):
            loss, parts = stage.train_step(t.train_model, batch)
        _check_finite(loss.detach(), "loss", stage.name, epoch, step, info, t.last_path)
        optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        if t.grad_clip > 0:
            t.scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            if not amp:  # under AMP the scaler skips steps with inf gradients by design
                _check_finite(norm, "gradient norm", stage.name, epoch, step, info, t.last_path)
        t.scaler.step(optimizer)
        t.scaler.update()
        step_schedule(t.scheduler)

        value = float(loss.detach())
        step_losses.append(value)
        totals["train_loss"] += value
        for key, part in parts.items():
            totals[f"train_{key}" if not key.startswith("train_") else key] += float(part)
        done += 1
        lr = optimizer.param_groups[0]["lr"]
        bar.update(task, advance=1, loss=totals["train_loss"] / done, lr=lr)
        for hook in hooks:
            hook.on_step(epoch, step, value)
    bar.remove_task(task)
    means = {k: v / max(done, 1) for k, v in totals.items()}
    if info.distributed:  # the logged loss is the mean over every rank's batches
        keys = sorted(means)
        summed = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=info.device)
        dist.all_reduce(summed)
        means = {k: float(v) / info.world_size for k, v in zip(keys, summed.tolist())}
    ordered = {"train_loss": means.pop("train_loss", float("nan")), **means}
    return {k: round(v, 6) for k, v in ordered.items()}

def _check_finite(value: Tensor, what: str, stage: str, epoch: int, step: int, info: DistInfo, last: Path) -> None:
    ok = bool(torch.isfinite(value).all())
    if info.distributed:  # every rank must stop together, or the others wait forever in all-reduce
        flag = torch.tensor([0 if ok else 1], device=info.device)
        dist.all_reduce(flag)
        ok = int(flag) == 0
    if ok:
        return
    kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written yet"
    raise LimbscanError(
        f"{stage}: {what} became {float(value) if value.numel() == 1 else 'non-finite'} at epoch {epoch + 1}, "
        f"step {step + 1}: lower the learning rate (train.lr_backbone / train.lr_heads) or check the "
        f"inputs; {kept}"
    )


def _validate(stage: Stage, model: nn.Module, info: DistInfo, amp: bool) -> dict[str, float | None]:
    metrics: dict[str, float | None] | None = None
    if info.is_main:  # validation sets are small; one rank scores them and tells the others
        model.eval()
        with torch.no_grad(), torch.autocast(info.device.type, enabled=amp):
            metrics = dict(stage.validate(model))
        model.train()
        if "val_auc" not in metrics:
            raise LimbscanError(f"{stage.name}: validate() must return val_auc (got {sorted(metrics)})")
        metrics = {k: (None if v is None else float(v)) for k, v in metrics.items()}
    if info.distributed:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics


def _steps_per_epoch(stage: Stage, cfg: Config, info: DistInfo) -> int:
    cap = int(cfg.train.max_steps_per_epoch or 0)
    loader = stage.train_loader(0, info.rank, info.world_size)
    try:
        steps = len(loader)  # type: ignore[arg-type]
    except TypeError:
        if cap <= 0:
            raise LimbscanError(
                f"{stage.name}: the training loader has no length; set train.max_steps_per_epoch"
            ) from None
        steps = cap
    if cap > 0:
        steps = min(steps, cap)
    if info.distributed:  # ranks must take the same number of steps, or DDP's all-reduce hangs
        t = torch.tensor([steps], device=info.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        steps = int(t)
    if steps <= 0:
        raise LimbscanError(f"{stage.name}: the training split gives no batches (is the dataset split?)")
    return steps

