"""One training loop for every stage (whole-image classifier, Mask R-CNN detector, cascade crop classifier).

A stage says what to train and how to score it (:class:`Stage`); :func:`fit` does the rest the same
way for all of them, in the manner of torchvision's ``references/detection``:

- SGD with momentum (or AdamW, ``train.optimizer``) over the stage's parameter groups, each
  carrying its own learning rate (the paper: backbone + RPN 1e-3, heads 1e-4); a linear warm-up,
  then a cosine / step / constant schedule, or a one-cycle schedule, stepped per optimiser step
  (:mod:`limbscan.train.optim`);
- gradients clipped by their total L2 norm (all parameters together) at ``train.grad_clip``;
- AMP (``torch.autocast`` + ``GradScaler``) and ``train.channels_last`` (the whole model and its
  batches) only on CUDA; the CNN backbones run channels-last on every device regardless (the models
  set it): measured on 2 CPU cores, a training step 1.2x (detector) to 1.55x (classifiers) faster
  than contiguous (README, "Training speed");
- a checkpoint each epoch, written atomically, with everything a resumed run needs to end on the
  same weights as an unkilled one (RNG states included); ``best.pt`` is the epoch with the best
  ``val_auc`` so far (ties keep the earlier epoch);
- one JSON line per epoch in ``out/metrics.jsonl``, optionally TensorBoard;
- a non-finite loss stops the run with a :class:`LimbscanError` and leaves the last good
  checkpoint as it was;
- under ``torchrun`` (``WORLD_SIZE`` > 1): ``DistributedDataParallel`` (gloo on CPU, NCCL on
  CUDA), each rank on its own shard of the data, rank 0 alone validating, checkpointing and logging.

A stage that fits without gradients (``needs_gradients = False``: the fused scenario's weights)
skips all of that: :func:`fit` calls its ``fit_model`` once, as its one epoch, and saves the same
checkpoint and log line (see :func:`_fit_without_gradients`).
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
    FORMAT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    sweep_temp_files,
)
from limbscan.train.optim import build_optimizer, lr_factor, step_schedule
from limbscan.train.records import append_metrics, rewrite_metrics
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

    ``train_loader(epoch, rank, world_size)`` must give the same batches for the same (seed, epoch),
    and each rank its own shard. ``train_step`` gets the batch already on the model's device and the
    model possibly wrapped in ``DistributedDataParallel`` (call it, don't reach into it).
    ``validate`` gets the bare model in eval mode under ``torch.no_grad`` and must return ``val_auc``
    (``None`` where it is undefined, e.g. a validation split with one class).
    A stage may set ``find_unused_parameters = True`` for DDP when some parameters skip a step, and
    ``checkpoint_extra`` (a dict of plain values) for what a checkpoint must carry beyond the weights,
    e.g. the pixel statistics a model was built with.
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


def fit(stage: Stage, out: str | Path, cfg: Config, resume: bool = False, progress: bool = True) -> FitResult:
    """Train ``stage`` for ``stage.epochs`` epochs; checkpoints in ``out/<stage.name>/``, log in ``out/metrics.jsonl``.

    With ``resume``, continue from ``out/<stage.name>/last.pt`` when there is one (a finished stage is
    not retrained); without it, any earlier run of this stage in ``out`` is started over.
    """
    if not getattr(stage, "needs_gradients", True):
        return _fit_without_gradients(stage, Path(out), cfg, resume, progress)
    info = init_distributed()
    out = Path(out)
    run = RunDir(out)
    folder = run.stage(stage.name)
    on_cuda = info.device.type == "cuda"
    amp = bool(cfg.train.amp) and on_cuda
    channels_last = bool(cfg.train.channels_last) and on_cuda
    grad_clip = float(cfg.train.grad_clip)

    model = stage.model.to(info.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(stage.param_groups(model), cfg)
    steps_per_epoch = _steps_per_epoch(stage, cfg, info)
    scheduler = LambdaLR(
        optimizer, lr_factor(cfg.train.schedule, cfg.train.warmup_steps, steps_per_epoch * stage.epochs)
    )
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp)

    start_epoch, best_auc, best_epoch, history = 0, None, None, []
    last_path = run.last(stage.name)
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, map_location=info.device)
        if ckpt.get("stage") != stage.name:
            raise LimbscanError(f"{last_path}: holds stage {ckpt.get('stage')!r}, not {stage.name!r}")
        _check_same_training_data(ckpt, cfg, last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] and scaler.is_enabled():  # empty when saved without AMP (e.g. on CPU)
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_auc, best_epoch = ckpt["epoch"], ckpt["best_auc"], ckpt["best_epoch"]
        history = list(ckpt["history"])
        states = ckpt["rng"]
        if len(states) == info.world_size:
            set_rng_state(states[info.rank])
        else:
            log.warning("%s: resumed on %d process(es), checkpoint made on %d: the run will not repeat exactly",
                        stage.name, info.world_size, len(states))
            seed_everything(cfg.train.seed + 1000 * start_epoch + info.rank)
        del ckpt
    else:
        seed_everything(cfg.train.seed + info.rank)

    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(folder)
        rewrite_metrics(run.metrics, stage.name, history)
    writer = _tensorboard(cfg, out, stage.name, info, purge_step=start_epoch * steps_per_epoch)
    barrier(info)

    train_model: nn.Module = model
    if info.distributed:
        train_model = DistributedDataParallel(
            model,
            device_ids=[info.local_rank] if on_cuda else None,
            find_unused_parameters=bool(getattr(stage, "find_unused_parameters", False)),
        )

    console = Console(stderr=True)
    step_losses: list[float] = []
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (progress and info.is_main),
    )
    try:
        with bar:
            for epoch in range(start_epoch, stage.epochs):
                started = time.perf_counter()
                parts = _train_epoch(
                    stage, train_model, model, optimizer, scheduler, scaler, epoch, steps_per_epoch,
                    info, amp, channels_last, grad_clip, last_path, bar, writer, step_losses,
                )
                train_seconds = time.perf_counter() - started
                metrics = _validate(stage, model, info, amp)
                auc = metrics.get("val_auc")
                record = {
                    "stage": stage.name,
                    "epoch": epoch + 1,
                    **parts,
                    **metrics,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.perf_counter() - started, 3),
                    "train_seconds": round(train_seconds, 3),
                }
                history.append(record)
                # Better when first, or when it has an AUC that beats the best (ties keep the earlier).
                improved = best_epoch is None or (auc is not None and (best_auc is None or auc > best_auc))
                if improved:
                    best_auc, best_epoch = auc, epoch + 1
                rngs = all_gather_objects(rng_state(), info)
                if info.is_main:
                    payload = {
                        "format": FORMAT,
                        "stage": stage.name,
                        "epoch": epoch + 1,
                        "epochs": stage.epochs,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": rngs,
                        "config": config_to_dict(cfg),
                        "best_auc": best_auc,
                        "best_epoch": best_epoch,
                        "history": history,
                        "world_size": info.world_size,
                        "extra": dict(getattr(stage, "checkpoint_extra", {})),
                    }
                    save_checkpoint(payload, last_path)
                    if improved:
                        save_checkpoint(payload, run.best(stage.name))
                    append_metrics(run.metrics, record)
                    if writer is not None:
                        for key, value in record.items():
                            if isinstance(value, int | float) and key not in ("epoch",):
                                writer.add_scalar(f"{stage.name}/{key}", value, epoch + 1)
                        writer.flush()
                    if progress:
                        shown = "n/a" if auc is None else f"{auc:.3f}"
                        bar.console.print(
                            f"{stage.name} epoch {epoch + 1}/{stage.epochs}: loss {parts['train_loss']:.4f}, "
                            f"val AUC {shown}, {record['seconds']:.1f} s" + ("  (best)" if improved else ""),
                            highlight=False,
                        )
                barrier(info)
    finally:
        if writer is not None:
            writer.close()
    return FitResult(stage.name, folder, len(history), best_epoch, best_auc, history, step_losses)


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
        payload = {
            "format": FORMAT, "stage": stage.name, "epoch": stage.epochs, "epochs": stage.epochs,
            "model": model.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": [rng_state()],
            "config": config_to_dict(cfg), "best_auc": auc, "best_epoch": stage.epochs, "history": [record],
            "world_size": 1, "extra": dict(getattr(stage, "checkpoint_extra", {})),
        }
        save_checkpoint(payload, last_path)
        save_checkpoint(payload, run.best(stage.name))
        rewrite_metrics(run.metrics, stage.name, [record])
        if progress:
            shown = "n/a" if auc is None else f"{auc:.3f}"
            Console(stderr=True).print(f"{stage.name}: fitted without gradients, val AUC {shown}, "
                                       f"{record['seconds']:.1f} s", highlight=False)
    barrier(info)
    return result(load_checkpoint(last_path))


def _train_epoch(
    stage: Stage,
    train_model: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
    epoch: int,
    steps: int,
    info: DistInfo,
    amp: bool,
    channels_last: bool,
    grad_clip: float,
    last_path: Path,
    bar: Progress,
    writer: Any,
    step_losses: list[float],
) -> dict[str, float]:
    model.train()
    totals: dict[str, float] = defaultdict(float)
    done = 0
    task = bar.add_task(f"{stage.name} {epoch + 1}/{stage.epochs}", total=steps,
                        loss=float("nan"), lr=optimizer.param_groups[0]["lr"])
    for step, batch in enumerate(stage.train_loader(epoch, info.rank, info.world_size)):
        if step >= steps:
            break
        batch = to_device(batch, info.device, channels_last)
        with torch.autocast(info.device.type, enabled=amp):
            loss, parts = stage.train_step(train_model, batch)
        _check_finite(loss.detach(), "loss", stage.name, epoch, step, info, last_path)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if not amp:  # under AMP the scaler skips steps with inf gradients by design
                _check_finite(norm, "gradient norm", stage.name, epoch, step, info, last_path)
        scaler.step(optimizer)
        scaler.update()
        step_schedule(scheduler)

        value = float(loss.detach())
        step_losses.append(value)
        totals["train_loss"] += value
        for key, part in parts.items():
            totals[f"train_{key}" if not key.startswith("train_") else key] += float(part)
        done += 1
        lr = optimizer.param_groups[0]["lr"]
        bar.update(task, advance=1, loss=totals["train_loss"] / done, lr=lr)
        if writer is not None:
            writer.add_scalar(f"{stage.name}/step_loss", value, epoch * steps + step + 1)
    bar.remove_task(task)
    means = {k: v / max(done, 1) for k, v in totals.items()}
    if info.distributed:  # the logged loss is the mean over every rank's batches
        keys = sorted(means)
        t = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=info.device)
        dist.all_reduce(t)
        means = {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}
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


def _tensorboard(cfg: Config, out: Path, stage: str, info: DistInfo, purge_step: int) -> Any:
    if not (cfg.train.tensorboard and info.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("train.tensorboard is set but tensorboard is not installed: `pip install tensorboard`")
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard" / stage), purge_step=purge_step or None)
