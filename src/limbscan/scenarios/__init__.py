"""The scenarios: one registered object per way of scoring an image, asked by everyone.

This module is the torch-free table of names (the CLI, config checks and bundles read it without
a model). Each scenario's :class:`~limbscan.scenarios.base.Scenario` subclass lives in its own
module here and is what training validation, ``evaluate``, ``predict``, ``serve`` and Grad-CAM all
score through. Adding one: its module, one :func:`register` line below, and its training stage
in training's table (nothing here imports training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from limbscan.errors import LimbscanError

if TYPE_CHECKING:
    from limbscan.scenarios.base import Scenario


@dataclass(frozen=True)
class ScenarioInfo:
    """What is known of a scenario without importing torch."""

    name: str
    module: str  # where its Scenario subclass lives
    cls: str  # that subclass's name
    needs: tuple[str, ...] = ()  # scenarios whose trained models it reads (trained before it)
    classifier: bool = False  # has a classifier of its own: Grad-CAM and ONNX export apply
    # Fitted on the validation split (the fused scenario's weights): its validation scores are
    # out-of-fold, and without scores to compare it is never the default
    # (see default_scenario below).
    fitted_on_validation: bool = False
    summary: str = ""
    # From a config (as a plain dict, e.g. a checkpoint's): the model in a few words, and its backbone(s).
    describe: Callable[[dict[str, Any]], str] = lambda cfg: ""
    backbones: Callable[[dict[str, Any]], str] = lambda cfg: ""


_REGISTRY: dict[str, ScenarioInfo] = {}


def register(info: ScenarioInfo) -> ScenarioInfo:
    """Add a scenario to the table; the order of registration is the order of training."""
    if info.name in _REGISTRY:
        raise LimbscanError(f"scenario {info.name!r} is registered twice")
    missing = [n for n in info.needs if n not in _REGISTRY]
    if missing:
        raise LimbscanError(f"scenario {info.name!r} needs {', '.join(missing)}, registered after it")
    _REGISTRY[info.name] = info
    return info


register(ScenarioInfo(
    "whole-image", "limbscan.scenarios.whole_image", "WholeImageScenario", classifier=True,
    summary="baseline: a CNN on the whole image",
    describe=lambda c: f"{c['classifier']['backbone']} @ {c['classifier']['image_size']} px",
    backbones=lambda c: c["classifier"]["backbone"],
))
register(ScenarioInfo(
    "detector", "limbscan.scenarios.detector", "DetectorScenario",
    summary="paper's scenario 1: Mask R-CNN alone, image score = best abnormal box",
    describe=lambda c: (f"Mask R-CNN, {c['detector']['backbone']}-FPN @ "
                        f"{c['detector']['min_size']}-{c['detector']['max_size']} px"),
    backbones=lambda c: c["detector"]["backbone"],
))
register(ScenarioInfo(
    "cascade", "limbscan.scenarios.cascade", "CascadeScenario", needs=("detector",), classifier=True,
    summary="paper's scenario 2: Mask R-CNN proposes the box, a CNN classifies its crop",
    describe=lambda c: (f"{c['classifier']['backbone']} on {c['classifier']['crop_size']} px crops "
                        f"(top {c['classifier']['top_k']})"),
    backbones=lambda c: f"{c['detector']['backbone']} + {c['classifier']['backbone']}",
))

register(ScenarioInfo(
    "fused", "limbscan.scenarios.fused", "FusedScenario", needs=("whole-image", "detector", "cascade"),
    fitted_on_validation=True,
    summary="the three scenarios' scores combined, weights fitted out-of-fold on validation; a calibrated probability",
    describe=lambda c: (f"{(c.get('fusion') or {}).get('rule', 'logistic')} fusion of whole-image, detector "
                        "and cascade scores"),
    backbones=lambda c: "none of its own: fuses whole-image, detector and cascade",
))


def names() -> tuple[str, ...]:
    """Every registered scenario, in training order (a scenario after those it needs)."""
    return tuple(_REGISTRY)


def info(name: str) -> ScenarioInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LimbscanError(f"unknown scenario {name!r} (known: {', '.join(_REGISTRY)})") from None


def scenario_class(name: str) -> type[Scenario]:
    """The scenario's class, its module imported on first use (and torch with it)."""
    entry = info(name)
    return getattr(import_module(entry.module), entry.cls)


def parse_scenarios(value: str) -> list[str]:
    """``all`` -> every scenario; ``"detector,cascade"`` -> those, in training order; else an error."""
    if value.strip() == "all":
        return list(_REGISTRY)
    wanted = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in _REGISTRY]
    if unknown or not wanted:
        raise LimbscanError(f"config: train.scenario {value!r}: use all or one of {', '.join(_REGISTRY)}")
    return [s for s in _REGISTRY if s in wanted]


def with_needs(wanted: list[str]) -> list[str]:
    """``wanted`` plus every scenario they need, in training order."""
    found: set[str] = set()

    def add(name: str) -> None:
        if name not in found:
            found.add(name)
            for need in info(name).needs:
                add(need)

    for name in wanted:
        add(name)
    return [s for s in _REGISTRY if s in found]


def classifier_scenarios() -> tuple[str, ...]:
    return tuple(s.name for s in _REGISTRY.values() if s.classifier)



def default_scenario(available: list[str]) -> str:
    """The default where no validation scores say which scenario is best: the last registered one
    ``available`` holds that was not fitted on validation (the paper's best, the cascade, when
    trained); a scenario fitted on validation (fused) only when nothing else is there.
    A bundle chooses by held-out validation AUC instead (:func:`limbscan.bundle.default.choose_default`)."""
    for name in reversed(_REGISTRY):
        if name in available and not _REGISTRY[name].fitted_on_validation:
            return name
    for name in reversed(_REGISTRY):
        if name in available:
            return name
    raise LimbscanError("no scenario to choose a default from")

__all__ = [
    "default_scenario",
    "ScenarioInfo",
    "classifier_scenarios",
    "info",
    "names",
    "parse_scenarios",
    "register",
    "scenario_class",
    "with_needs",
]
