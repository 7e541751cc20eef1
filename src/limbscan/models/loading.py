"""Reading checkpoints and rebuilding the models they hold: what training, evaluation and
inference all load through (training writes checkpoints in :mod:`limbscan.train.checkpoint`).

A checkpoint is a plain dict saved with ``torch.save`` and read back with ``weights_only=True``
(no pickled code runs on load). Its ``config`` is the run's resolved config and its ``extra``
what rebuilding the model needs beyond it (the training split's pixel statistics, input size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from limbscan.config import ClassifierConfig, DetectorConfig
from limbscan.errors import BadInputError, LimbscanError

CHECKPOINT_FORMAT = 1  # bump when the payload's keys change meaning


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a limbscan checkpoint; a clear error when the file is missing, torn or foreign."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise BadInputError(path, f"not a readable checkpoint ({type(err).__name__})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "model" not in payload:
        raise BadInputError(path, f"not a limbscan checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return payload


def cache_side(ckpt: dict[str, Any]) -> int:
    """The longest side the checkpoint's images were cached at: what inference resizes to."""
    return int(ckpt["config"]["data"]["cache"]["longest_side"])


def load_detector(path: str | Path, ckpt: dict[str, Any] | None = None) -> torch.nn.Module:
    """The detector of a checkpoint, rebuilt with the checkpoint's own detector config and pixel
    statistics, in eval mode."""
    from limbscan.models.detector import build_detector

    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    extra = ckpt.get("extra") or {}
    if ckpt.get("stage") != "detector" or "pixel_mean" not in extra:
        raise LimbscanError(f"{path}: not a detector checkpoint")
    model = build_detector(DetectorConfig(**ckpt["config"]["detector"]), extra["pixel_mean"], extra["pixel_std"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load_classifier(path: str | Path, ckpt: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A classifier rebuilt from its checkpoint, in eval mode, and the checkpoint's ``extra`` with
    ``cache_side`` and ``config`` added."""
    from limbscan.models.classifier import build_classifier
    from limbscan.scenarios import classifier_scenarios

    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    extra = dict(ckpt.get("extra") or {})
    if ckpt.get("stage") not in classifier_scenarios() or "pixel_mean" not in extra:
        raise LimbscanError(f"{path}: not a classifier checkpoint")
    model = build_classifier(ClassifierConfig(**ckpt["config"]["classifier"]), extra["pixel_mean"], extra["pixel_std"])
    model.load_state_dict(ckpt["model"])
    extra["cache_side"] = cache_side(ckpt)
    extra["config"] = ckpt["config"]
    return model.eval(), extra


__all__ = ["CHECKPOINT_FORMAT", "cache_side", "load_checkpoint", "load_classifier", "load_detector"]
