"""The options and arguments more than one command takes, each declared once, and the closed
sets of values as Enums (typer lists them in ``--help`` and refuses any other value, naming them).

Import-light on purpose: ``limbscan --help`` reads this module, so no numpy or torch here.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from limbscan.localise import AUTO, LOCALISERS
from limbscan.scenarios import names as scenario_names

if TYPE_CHECKING:
    from limbscan.config import Config
    from limbscan.rundir import RunDir

SCENARIO_CHOICES = " | ".join(scenario_names())  # the registered scenarios, for --help


def _choices(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    """A StrEnum whose members are ``values``, in that order (a member's name is its value)."""
    return StrEnum(name, [(v, v) for v in values])


class Split(StrEnum):
    """``evaluate --split``: a split of the dataset (limbscan.data.dataset.SPLITS), or every image."""

    test = "test"
    val = "val"
    train = "train"
    all = "all"


class Studies(StrEnum):
    """``predict --studies``: how files that are not DICOM form studies (limbscan.analysis.STUDY_KEYS)."""

    file = "file"
    folder = "folder"


ScenarioName = _choices("ScenarioName", scenario_names())  # one registered scenario
Localiser = _choices("Localiser", (AUTO, *LOCALISERS))  # `export --localiser`


# -- shared options and arguments ---------------------------------------------------------
DatasetArg = Annotated[Path, typer.Argument(help="Dataset folder (holds dataset.json).")]
BundleArg = Annotated[Optional[Path], typer.Argument(
    help="A bundle folder made by `limbscan export` (NAME.limbscan); left out: the model limbscan ships.")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (DS).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
GateOpt = Annotated[bool, typer.Option(
    "--gate/--no-gate", help="Ask the input gate first: images that are no lower-limb radiograph (another body part or "
                             "modality, a photograph) are 'not analysed'. --no-gate scores everything (research use).")]

_CONFIG = ("--config", "-c")
ConfigOpt = Annotated[Optional[Path], typer.Option(*_CONFIG, help="YAML config, e.g. configs/cpu.yaml.")]
SplitConfigOpt = Annotated[Optional[Path], typer.Option(*_CONFIG, help="YAML config (data.split).")]
CacheConfigOpt = Annotated[Optional[Path], typer.Option(*_CONFIG, help="YAML config (data.cache).")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="Config overrides, key=value (e.g. train.epochs=3).")]
AuxOpt = Annotated[Optional[list[Path]], typer.Option(
    "--aux", help="Auxiliary training data: a dataset folder whose every image joins training, never validation "
                  "or test; repeat for several (adds to data.auxiliary; data.auxiliary_share sets its batch share).")]
DefaultCvOpt = Annotated[Optional[Path], typer.Option(
    "--default-from-cv", help="Choose the bundle's default scenario by the best mean AUC across the folds of this "
                              "finished `limbscan cv` folder (same dataset; every scenario cross-validated) instead of "
                              "by validation AUC.")]

# `train` and `cv` take several scenarios ("all", or a comma list): a string, checked by the library.
ScenariosOpt = Annotated[
    Optional[str], typer.Option(help=f"{SCENARIO_CHOICES} | all, or a comma list (default: the config's).")]
# `predict` and `listen` take one.
ScenarioOpt = Annotated[Optional[ScenarioName], typer.Option(help=f"{SCENARIO_CHOICES} (default: the bundle's).")]
CompareScenarioOpt = Annotated[
    Optional[ScenarioName], typer.Option(help="Keep only this scenario of each report (e.g. cascade).")]
SplitOpt = Annotated[Split, typer.Option(help="test | val | train | all (all: every image, e.g. a new dataset).")]
StudiesOpt = Annotated[Studies, typer.Option(
    "--studies", help="How PNG / JPEG files form studies in studies.csv: file (each its own) or folder (one per "
                      "folder, as MURA lays them out). DICOM files use their StudyInstanceUID.")]
LocaliserOpt = Annotated[Localiser, typer.Option(
    "--localiser", help="Whose boxes a likely or suspected image shows when its scenario draws none: auto (the "
                        "detector if the run has one, else Grad-CAM), detector, cascade or gradcam.")]
# builtin, none, or a FILE: not a closed set, so a string.
ExportGateOpt = Annotated[str, typer.Option(
    "--gate", help="The input gate the bundle carries: builtin (the one limbscan ships), a gate.npz from "
                   "`limbscan gate train`, or none (only DICOM headers then keep images out of scope).")]

TargetSensitivityOpt = Annotated[Optional[float], typer.Option(
    help="Operating point: reach this sensitivity on validation (default: Youden's J).")]
NBootOpt = Annotated[int, typer.Option(help="Bootstrap resamples (of patients) for the 95 % CIs.")]
HostOpt = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")]


def value(choice: Enum | None) -> str | None:
    """The string a closed-set option stands for (None stays None), as the library takes it."""
    return None if choice is None else choice.value


def comma_list(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",")]


def load_settings(config: Path | None, overrides: list[str] | None = None, aux: list[Path] | None = None,
                  run: RunDir | None = None, resume: bool = False) -> Config:
    """The config a command runs with: the defaults, then ``--config``, then ``key=value``
    overrides, then ``--aux`` folders. Given the run folder, a resumed run given no ``--config``
    goes on with the settings it started with (:meth:`RunDir.config_for`, the library's rule)."""
    from limbscan.config import add_auxiliary, load_config

    overrides = list(overrides or [])
    cfg = run.config_for(config, overrides, resume) if run is not None else load_config(config, overrides)
    return add_auxiliary(cfg, aux)
