"""``detector``: the paper's scenario 1. Mask R-CNN with classes normal / abnormal (a normal
image boxed whole, an abnormal one on its lesion); image score = its best ABNORMAL box's score."""

from __future__ import annotations

from torch import nn

from limbscan.scenarios.base import Batch, Finding, ModelStore, Scenario


class DetectorScenario(Scenario):
    name = "detector"

    def __init__(self, detector: nn.Module, cache_side: int):
        self.detector = detector
        self.cache_side = int(cache_side)

    @classmethod
    def load(cls, store: ModelStore) -> DetectorScenario:
        from limbscan.models.loading import cache_side

        return cls(store.detector(), cache_side(store.checkpoint(cls.name)))

    def score(self, batch: Batch) -> list[Finding]:
        return [
            Finding(d.score, d.boxes, d.box_scores, detector_boxes=True, boxes_from=self.name)
            for d in batch.detections(self.detector, 1)
        ]
