"""``cascade``: the paper's scenario 2. Mask R-CNN proposes the lesion box, a CNN classifies the
box's crop (200 x 200 in the paper).

Image score (:func:`cascade_score`, the one copy): the best of the top-k crops' probabilities
(``classifier.cascade_score: crop``, the paper's), or its geometric mean with the detector's own
image score (``geomean``: both stages must agree). An image the detector finds nothing on is
cropped whole. :meth:`CascadeScenario.score_proposals` scores given boxes: training's validation
scores the detector's saved proposals through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import torch
from torch import Tensor, nn

from limbscan.config import CascadeScore
from limbscan.data.geometry import crop_box, crop_window, letterbox
from limbscan.errors import LimbscanError
from limbscan.scenarios.base import Batch, Classify, Finding, ImageInput, ModelStore, Scenario, probabilities, recorded

CASCADE_SCORES: tuple[str, ...] = get_args(CascadeScore)  # the config's choices


def cascade_score(crop_probability: float, detector_score: float, rule: str = "crop") -> float:
    """The cascade's image score from its best crop's probability and the detector's image score
    (its best abnormal box): ``crop`` is the paper's (the crop alone), ``geomean`` the geometric
    mean of the two (both stages must agree for a high score)."""
    if rule == "crop":
        return float(crop_probability)
    if rule == "geomean":
        return float(max(crop_probability, 0.0) * max(detector_score, 0.0)) ** 0.5
    raise LimbscanError(f"cascade score rule {rule!r}: expected one of {', '.join(CASCADE_SCORES)}")


class CascadeScenario(Scenario):
    name = "cascade"

    def __init__(self, detector: nn.Module | None, classifier: nn.Module, input_size: int, margin: float,
                 top_k: int, rule: str, cache_side: int, classify: Classify | None = None):
        if rule not in CASCADE_SCORES:
            raise LimbscanError(f"cascade score rule {rule!r}: expected one of {', '.join(CASCADE_SCORES)}")
        self.detector = detector
        self.classifier = classifier
        self.classify = classify or classifier
        self.input_size, self.margin, self.top_k, self.rule = int(input_size), float(margin), int(top_k), rule
        self.cache_side = int(cache_side)

    @classmethod
    def load(cls, store: ModelStore) -> CascadeScenario:
        model, extra = store.classifier(cls.name)
        return cls(store.detector(), model, int(extra["input_size"]), float(extra["crop_margin"]),
                   int(extra["top_k"]), rule_of(extra, store.folder.best(cls.name)), int(extra["cache_side"]),
                   store.classify(cls.name))

    def settings(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "crop_margin": self.margin, "top_k": self.top_k,
                "cascade_score": self.rule}

    def score(self, batch: Batch) -> list[Finding]:
        if self.detector is None:
            raise LimbscanError("cascade: scoring pixels needs its detector")
        found = batch.detections(self.detector, self.top_k)
        return self.score_proposals(batch.images, [d.top for d in found], [d.score for d in found])

    def score_proposals(self, images: Sequence[ImageInput], proposals: Sequence[Sequence[Sequence[float]]],
                        detector_scores: Sequence[float]) -> list[Finding]:
        """Crop each image's proposals (ORIGINAL pixels; the whole image where there are none),
        classify every crop at once, score each image by :func:`cascade_score`; each box keeps
        its own crop's probability, best first."""
        owners, boxes, crops = [], [], []
        for i, (im, top) in enumerate(zip(images, proposals, strict=True)):
            for box in top or [im.whole_box()]:
                crops.append(crop_box(im.pixels, im.to_cache_scale(box), self.margin, self.input_size))
                owners.append(i)
                boxes.append([float(v) for v in box])
        probs = probabilities(self.classify, torch.stack(crops))
        findings = []
        for i, det_score in enumerate(detector_scores):
            mine = sorted((j for j, o in enumerate(owners) if o == i), key=lambda j: -probs[j])
            findings.append(Finding(
                cascade_score(probs[mine[0]], det_score, self.rule),
                [boxes[j] for j in mine], [probs[j] for j in mine], detector_boxes=True, boxes_from=self.name,
            ))
        return findings

    def explain_input(self, image: ImageInput, finding: Finding) -> tuple[Tensor, tuple[int, int, int, int]]:
        box = finding.boxes[0] if finding.boxes else image.whole_box()
        x0, y0, x1, y1 = crop_window(image.to_cache_scale(box), tuple(image.pixels.shape[-2:]), self.margin)
        return letterbox(image.pixels[:, y0:y1, x0:x1], self.input_size), (x0, y0, x1, y1)


def rule_of(extra: dict[str, Any], where: str | Path = "") -> str:
    """A cascade checkpoint's score rule (its ``extra``'s ``cascade_score``; ``where``: its path)."""
    return str(recorded(extra, "cascade_score", "cascade", where))
