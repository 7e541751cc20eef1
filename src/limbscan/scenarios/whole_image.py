"""``whole-image``: the MURA-style baseline. A CNN sees the whole image, letterboxed (or squashed,
``classifier.image_resize``) to a square; image score = sigmoid(logit), or with
``classifier.tta_flip`` the mean of that and the mirrored image's. No box."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader

from limbscan.data.datasets import WholeImageDataset, join_sources
from limbscan.data.geometry import square_input
from limbscan.rundir import RunDir
from limbscan.scenarios.base import Batch, Classify, Finding, ImageInput, ModelStore, Scenario, probabilities
from limbscan.scenarios.stage import ClassifierStage, RunData, train_loader, validate_scenario


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
        # Checkpoints from before the options letterboxed and did not mirror.
        return cls(model, int(extra["input_size"]), int(extra["cache_side"]), store.classify(cls.name),
                   str(extra.get("image_resize", "letterbox")), bool(extra.get("tta_flip", False)))

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

    @classmethod
    def make_stage(cls, run: RunData, out: RunDir, resume: bool = False, progress: bool = False) -> WholeImageStage:
        return WholeImageStage(run)


class WholeImageStage(ClassifierStage):
    """The whole image, augmented, letterboxed or squashed; one logit."""

    name = WholeImageScenario.name

    def __init__(self, run: RunData):
        super().__init__(run, run.cfg.classifier.image_size)
        c = run.cfg.classifier
        self.checkpoint_extra.update(image_resize=c.image_resize, tta_flip=bool(c.tta_flip))
        self.train_set = join_sources([
            WholeImageDataset(source.ds, source.images, run.cache_side, c.image_size, self.augment, c.image_resize)
            for source in run.train_sources
        ])
        self._set_pos_weight(self.train_set.labels)

    def train_loader(self, epoch: int, rank: int, world_size: int) -> DataLoader:
        t = self.cfg.train
        return train_loader(self.train_set, self.train_set.labels, self.cfg, epoch, rank, world_size,
                            t.batch_size, t.balance)

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        c = self.cfg.classifier
        scenario = WholeImageScenario(model, c.image_size, self.run.cache_side, None, c.image_resize, c.tta_flip)
        return validate_scenario(scenario, self.run)
