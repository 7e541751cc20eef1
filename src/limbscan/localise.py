"""Where to look: the boxes a likely or suspected image shows when its scenario draws none.

A bundle names one localiser (``bundle.json`` ``localiser``): the detector's boxes, the cascade's,
or the whole-image classifier's Grad-CAM box. Every prediction records who drew its boxes
(``Prediction.boxes_from``), so the overlay, the page and the structured report can say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from limbscan.errors import LimbscanError

if TYPE_CHECKING:
    from limbscan.inference import Predictor

LOCALISERS = ("detector", "cascade", "gradcam")
AUTO = "auto"
# Measured on the same held-out fractures (docs/two-stage.md): the detector's top box found the
# fracture more often than the Grad-CAM box, and the cascade (top_k 1) shows the detector's box.
PREFERENCE = ("detector", "cascade", "gradcam")
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
    return [name for name in LOCALISERS
            if (name == "gradcam" and GRADCAM_SCENARIO in scenarios) or name in scenarios]


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
    for name in PREFERENCE:
        if name in have:
            return {"name": name, "why": WHY[name]}
    return None


def localise(model: Predictor, originals: Sequence[Any], predictions: Sequence[Any], masks: bool = True) -> None:
    """Give each in-scope likely or suspected prediction without boxes the bundle localiser's boxes."""
    import torch

    entry = model.manifest.get("localiser") or {}
    name = entry.get("name")
    todo = [i for i, p in enumerate(predictions)
            if name and p.in_scope and not p.detections and p.level in ("likely", "suspected")]
    if not todo:
        return
    if name == "gradcam":
        _gradcam_boxes(model, [originals[i] for i in todo], [predictions[i] for i in todo])
        return
    from limbscan.inference import MAX_DETECTIONS, Detection
    from limbscan.scenarios.base import Batch, ImageInput

    scenario = model.scenario(name)
    inputs = [ImageInput(model.preprocess(originals[i]), predictions[i].width, predictions[i].height) for i in todo]
    with torch.inference_mode():
        batch = Batch(inputs, detector_batch_size=len(inputs))
        for j, (i, finding) in enumerate(zip(todo, batch.findings(scenario), strict=True)):
            pred = predictions[i]
            pred.detections = [Detection(box, float(score)) for box, score
                               in zip(finding.boxes[:MAX_DETECTIONS], finding.box_scores, strict=False)]
            pred.boxes_from = name if pred.detections else None
            if masks and finding.detector_boxes and pred.detections:
                found = batch.masks(scenario.detector, j, [d.box for d in pred.detections])  # type: ignore[attr-defined]
                for d, mask in zip(pred.detections, found, strict=True):
                    d.mask = mask


def _gradcam_boxes(model: Predictor, originals: Sequence[Any], predictions: Sequence[Any]) -> None:
    from dataclasses import replace

    from limbscan.explain import cam_box, gradcam
    from limbscan.inference import Detection

    for pixels, pred in zip(originals, predictions, strict=True):
        # Grad-CAM of the whole-image classifier, whichever scenario scored the image.
        box = cam_box(gradcam(model, pixels, replace(pred, scenario=GRADCAM_SCENARIO, detections=[])))
        if box is not None:
            pred.detections = [Detection(box, float(pred.scores.get(GRADCAM_SCENARIO, pred.probability)))]
            pred.boxes_from = "gradcam"


__all__ = ["AUTO", "LOCALISERS", "available", "choose", "localise"]
