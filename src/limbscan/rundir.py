"""The files of a run folder (``limbscan train -o RUN``) and of a bundle, named in one place.

A run holds ``config.yaml``, ``train.json``, ``val_scores.json``, ``metrics.jsonl``, ``report.md``
and per scenario ``<scenario>/last.pt``, ``best.pt`` and its own files (docs/architecture.md, "Run
folder"). A bundle has the same layout, with ``bundle.json`` and only ``best.pt``, so whatever
scores a run scores a bundle. Torch-free: the CLI and the bundle read it without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from limbscan.config import Config

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "train.json"
VAL_SCORES_FILE = "val_scores.json"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.md"
LAST, BEST = "last.pt", "best.pt"
# A cross-validation folder (``limbscan cv -o OUT``)
FOLDS_FILE = "folds.json"
OOF_SCORES_FILE = "oof_scores.csv"
CV_FILE = "cv.json"


@dataclass(frozen=True)
class _Folder:
    """A folder limbscan writes; each property of a subclass is one of its files."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE


@dataclass(frozen=True, init=False)  # _Folder's __init__: any path-like becomes a Path
class RunDir(_Folder):
    """A run (or bundle) folder; each property is one of its files, whether or not it exists yet."""
    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def val_scores(self) -> Path:
        return self.root / VAL_SCORES_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    def stage(self, scenario: str) -> Path:
        """The scenario's folder: its checkpoints and own files."""
        return self.root / scenario

    def best(self, scenario: str) -> Path:
        return self.stage(scenario) / BEST

    def last(self, scenario: str) -> Path:
        return self.stage(scenario) / LAST

    def stage_file(self, scenario: str, name: str) -> Path:
        return self.stage(scenario) / name

    def trained(self) -> list[str]:
        """The scenarios with a best checkpoint here, in registry (training) order."""
        from limbscan.scenarios import names

        return [name for name in names() if self.best(name).is_file()]

    def config_for(self, path: str | Path | None, overrides: list[str] | None, resume: bool) -> Config:
        """The config a training call into this folder runs with: the library's rule, whatever the caller.

        ``path`` (a YAML file) and ``overrides`` as given; but a resumed run given no file goes
        on with the settings it started with (this folder's ``config.yaml``), so ``--resume``
        alone ends on the weights an unkilled run would have."""
        from limbscan.config import load_config

        if resume and path is None and self.config.is_file():
            path = self.config
        return load_config(path, overrides)


@dataclass(frozen=True, init=False)
class CvDir(_Folder):
    """A cross-validation folder (``limbscan cv -o OUT``)::

        config.yaml       the resolved config every fold trains with
        folds.json        image id -> fold, with k, the seed and the dataset's sha256
        fold-<i>/         a run folder (:class:`RunDir`): fold i validates, the other folds train
        oof_scores.csv    every pooled image's out-of-fold score, one column per scenario
        cv.json           per scenario: fold AUCs, mean and sd, pooled out-of-fold AUC, operating points
    """

    @property
    def folds(self) -> Path:
        return self.root / FOLDS_FILE

    @property
    def oof_scores(self) -> Path:
        return self.root / OOF_SCORES_FILE

    @property
    def summary(self) -> Path:
        return self.root / CV_FILE

    def fold(self, i: int) -> RunDir:
        return RunDir(self.root / f"fold-{i}")


__all__ = [
    "BEST",
    "CONFIG_FILE",
    "CV_FILE",
    "FOLDS_FILE",
    "OOF_SCORES_FILE",
    "CvDir",
    "LAST",
    "METRICS_FILE",
    "REPORT_FILE",
    "SUMMARY_FILE",
    "VAL_SCORES_FILE",
    "RunDir",
]
