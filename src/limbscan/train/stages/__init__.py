"""The training stages: one per registered scenario, by name (:data:`STAGES`).

A stage is what :func:`limbscan.train.engine.fit` trains (its ``Stage`` protocol): the model,
the epoch's batches, the loss, and validation through its scenario's own scoring. Each lives in
a module named after its scenario's (``whole_image.py``, ``detector.py``, ``cascade.py``,
``fused.py``; what they share in ``base.py``). A stage imports its scenario; a scenario never
imports its stage. :func:`make_stage` is how the runner, cross-validation and tests get one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from limbscan.errors import LimbscanError
from limbscan.rundir import RunDir
from limbscan.train.engine import Stage
from limbscan.train.stages.base import RunData
from limbscan.train.stages.cascade import CascadeStage
from limbscan.train.stages.detector import DetectorStage
from limbscan.train.stages.fused import FusedStage
from limbscan.train.stages.whole_image import WholeImageStage


class StageClass(Protocol):
    """A stage's class: named after its scenario, it makes the stage for a run folder."""

    name: str

    def for_run(self, run: RunData, out: RunDir, resume: bool, progress: bool) -> Stage: ...


# Scenario name -> its stage's class.
STAGES: dict[str, StageClass] = {
    stage.name: stage for stage in (WholeImageStage, DetectorStage, CascadeStage, FusedStage)
}


def make_stage(
    name: str, run: RunData, out: str | Path | RunDir, resume: bool = False, progress: bool = False
) -> Stage:
    """The training stage of scenario ``name`` for the run in ``out``; ``resume`` reuses what an
    earlier run saved there (the cascade's proposals)."""
    if name not in STAGES:
        raise LimbscanError(f"no training stage for scenario {name!r} (stages: {', '.join(STAGES)})")
    return STAGES[name].for_run(run, out if isinstance(out, RunDir) else RunDir(out), resume, progress)


__all__ = ["STAGES", "StageClass", "make_stage"]
