"""Training: one engine for every stage (:func:`fit`), and each scenario's stage (:mod:`limbscan.train.stages`)."""

from limbscan.train.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from limbscan.train.engine import FitResult, Stage, fit
from limbscan.utils.distributed import init_distributed, shutdown_distributed


def __getattr__(name: str):
    # The scenarios pull in the models (timm, torchvision detection): imported when first asked for.
    if name == "train":
        from limbscan.train.runner import train

        return train
    if name == "cross_validate":
        from limbscan.train.cv import cross_validate

        return cross_validate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FitResult",
    "Stage",
    "cross_validate",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "shutdown_distributed",
    "train",
]
