"""Checkpoints written atomically, and the random-number state that makes a resumed run repeat.

A checkpoint is a plain dict saved with ``torch.save`` and read back with ``weights_only=True``
(no pickled code runs on load), so everything in it is tensors, numbers, strings, lists,
tuples and dicts: NumPy's generator state is stored as a tensor for that reason.
:func:`stage_checkpoint` says what a stage's ``last.pt`` and ``best.pt`` hold.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from limbscan.config import Config, config_to_dict
from limbscan.errors import LimbscanError
from limbscan.models.loading import CHECKPOINT_FORMAT as FORMAT  # checked on load, in models/loading.py
from limbscan.models.loading import load_checkpoint  # noqa: F401
from limbscan.rundir import BEST, LAST  # noqa: F401  (named in limbscan.rundir; imported from here too)
from limbscan.utils.files import atomic_file, temp_glob


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` so that ``path`` always holds a whole checkpoint: the old one or the new one.

    A run killed mid-write (SIGKILL, power cut) leaves a stray temp file, never a torn ``last.pt``.
    """
    path = Path(path)
    try:
        # permissions None: checkpoints keep mkstemp's 0600, as they always have.
        with atomic_file(path, "wb", permissions=None) as fh:
            torch.save(payload, fh)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LimbscanError(
                f"{path}: disk full while writing the checkpoint; the previous {path.name} is intact. "
                "Free some space and rerun with --resume."
            ) from err
        raise
    return path


def stage_checkpoint(
    stage: Any,
    cfg: Config,
    *,
    epoch: int,
    model: torch.nn.Module,
    rngs: list[dict[str, Any]],
    best_auc: float | None,
    best_epoch: int | None,
    history: list[dict],
    world_size: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """A stage's checkpoint after ``epoch`` epochs: all that a resumed run reads back to go on as
    if never stopped (``rngs``: each rank's :func:`rng_state`), and what loading the model needs
    (``stage.checkpoint_extra``). Without an optimiser (a stage fitted without gradients) its
    state, the schedule's and the scaler's are empty."""
    return {
        "format": FORMAT,
        "stage": stage.name,
        "epoch": epoch,
        "epochs": stage.epochs,
        "model": model.state_dict(),
        "optimizer": {} if optimizer is None else optimizer.state_dict(),
        "scheduler": {} if scheduler is None else scheduler.state_dict(),
        "scaler": {} if scaler is None else scaler.state_dict(),
        "rng": rngs,
        "config": config_to_dict(cfg),
        "best_auc": best_auc,
        "best_epoch": best_epoch,
        "history": history,
        "world_size": world_size,
        "extra": dict(getattr(stage, "checkpoint_extra", {})),
    }


def sweep_temp_files(folder: str | Path) -> None:
    """Remove temp files left by a save that was killed part-way."""
    for stray in Path(folder).glob(temp_glob("*.pt")):
        stray.unlink(missing_ok=True)


def seed_everything(seed: int) -> None:
    """Seed every generator a training step may draw from (Python, NumPy's global, torch CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """The state of every generator :func:`seed_everything` seeds, in a ``weights_only``-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((
        np_state["kind"],
        np_state["keys"].cpu().numpy().astype(np.uint32),
        np_state["pos"],
        np_state["has_gauss"],
        np_state["cached"],
    ))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _as_tuples(value: Any) -> Any:
    # random.setstate needs tuples; a round trip through some serialisers turns them into lists.
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value
