"""Where to look: the boxes a likely or suspected image shows when its scenario draws none.

A bundle names one localiser (``bundle.json`` ``localiser``): the detector's boxes, the cascade's,
or the whole-image classifier's Grad-CAM box. Every prediction records who drew its boxes
(``Prediction.boxes_from``), so the overlay, the page and the structured report can say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from limbscan.errors import LimbscanError
from limbscan.operating_points import LIKELY, SUSPECTED

if TYPE_CHECKING:
    from limbscan.inference import Predictor

GRADCAM = "gradcam"
# Best measured first (docs/two-stage.md): the detector's top box found the fracture more often
# than the Grad-CAM box, and the cascade (top_k 1) shows the detector's box.
LOCALISERS = ("detector", "cascade", GRADCAM)
AUTO = "auto"
WHY = {
    "detector": "the detector's top box found the fracture more often than the Grad-CAM box on held-out "
                "FracAtlas and hip-roboflow-dev images (docs/two-stage.md)",
    "cascade": "the cascade's box (the detector's proposal) found the fracture more often than the Grad-CAM box "
               "(docs/two-stage.md)",
    "gradcam": "the bundle has no detector: the whole-image classifier's Grad-CAM box",
}
GRADCAM_SCENARIO = "whole-image"  # the classifier whose Grad-CAM box is drawn


def available(scenarios: Sequence[str]) -> list[str]:
    """The localisers a bundle with these scenarios can run."""
    return [name for name in LOCALISERS if (name == GRADCAM and GRADCAM_SCENARIO in scenarios) or name in scenarios]


def choose(scenarios: Sequence[str], requested: str = AUTO) -> dict[str, str] | None:
    """The manifest's ``localiser`` entry: ``requested``, or the best measured one the bundle has."""
    have = available(scenarios)
    if requested != AUTO:
        if requested not in LOCALISERS:
            raise LimbscanError(f"localiser {requested!r}: use one of {AUTO}, {', '.join(LOCALISERS)}")
        if requested not in have:
            raise LimbscanError(f"localiser {requested!r} needs a scenario this run lacks "
                                f"(it can use: {', '.join(have) or 'none'})")
        return {"name": requested, "why": "chosen at export (--localiser)"}
    return {"name": have[0], "why": WHY[have[0]]} if have else None


def wanted(name: str | None, predictions: Sequence[Any]) -> list[int]:
    """The predictions the localiser ``name`` draws on: in scope, likely or suspected, without boxes."""
    return [i for i, p in enumerate(predictions)
            if name and p.in_scope and not p.detections and p.level in (LIKELY, SUSPECTED)]


def gradcam_box(model: Predictor, pixels: Any, pred: Any) -> tuple[list[float], float] | None:
    """The whole-image classifier's Grad-CAM box on ``pixels`` (as read) and its score, or None."""
    from dataclasses import replace

    from limbscan.explain import cam_box, gradcam

    # Grad-CAM of the whole-image classifier, whichever scenario scored the image.
    box = cam_box(gradcam(model, pixels, replace(pred, scenario=GRADCAM_SCENARIO, detections=[])))
    return None if box is None else (box, float(pred.scores.get(GRADCAM_SCENARIO, pred.probability)))


__all__ = ["AUTO", "GRADCAM", "LOCALISERS", "available", "choose", "gradcam_box", "wanted"]
