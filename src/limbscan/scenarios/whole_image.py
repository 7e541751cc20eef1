"""``whole-image``: the MURA-style baseline. A CNN sees the whole image, letterboxed (or squashed,
``classifier.image_resize``) to a square; image score = sigmoid(logit), or with
``classifier.tta_flip`` the mean of that and the mirrored image's. No box."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from limbscan.data.geometry import square_input
from limbscan.scenarios.base import Batch, Classify, Finding, ImageInput, ModelStore, Scenario, probabilities, recorded


class WholeImageScenario(Scenario):
    name = "whole-image"

    def __init__(
        self,
        classifier: nn.Module,
        input_size: int,
        cache_side: int,
        classify: Classify | None = None,
        resize: str = "letterbox",
        tta_flip: bool = False,
    ):
        self.classifier = classifier
        self.classify = classify or classifier
        self.input_size = int(input_size)
        self.cache_side = int(cache_side)
        self.input_resize = resize
        self.tta_flip = bool(tta_flip)

    @classmethod
    def load(cls, store: ModelStore) -> WholeImageScenario:
        model, extra = store.classifier(cls.name)
        where = store.folder.best(cls.name)
        return cls(model, int(extra["input_size"]), int(extra["cache_side"]), store.classify(cls.name),
                   str(recorded(extra, "image_resize", cls.name, where)), bool(recorded(extra, "tta_flip", cls.name, where)))

    def inputs(self, images: list[ImageInput]) -> Tensor:
        import torch

        return torch.stack([square_input(im.pixels, self.input_size, self.input_resize) for im in images])

    def score(self, batch: Batch) -> list[Finding]:
        x = self.inputs(batch.images)
        p = probabilities(self.classify, x)
        if self.tta_flip:
            mirrored = probabilities(self.classify, x.flip(-1))
            p = [(a + b) / 2 for a, b in zip(p, mirrored)]
        return [Finding(v) for v in p]

    def settings(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "image_resize": self.input_resize, "tta_flip": self.tta_flip}

    def explain_input(self, image: ImageInput, finding: Finding) -> tuple[Tensor, tuple[int, int, int, int]]:
        h, w = image.pixels.shape[-2:]
        return square_input(image.pixels, self.input_size, self.input_resize), (0, 0, int(w), int(h))
