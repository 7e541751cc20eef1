"""``whole-image``: the MURA-style baseline. A CNN sees the whole image, letterboxed to a square;
image score = sigmoid(logit). No box."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader

from limbscan.data.torchdata import WholeImageDataset, join_sources, letterbox
from limbscan.rundir import RunDir
from limbscan.scenarios.base import Batch, Classify, Finding, ImageInput, ModelStore, Scenario, probabilities
from limbscan.scenarios.stage import ClassifierStage, RunData, train_loader, validate_scenario


class WholeImageScenario(Scenario):
    name = "whole-image"

    def __init__(self, classifier: nn.Module, input_size: int, cache_side: int, classify: Classify | None = None):
        self.classifier = classifier
        self.classify = classify or classifier
        self.input_size = int(input_size)
        self.cache_side = int(cache_side)

    @classmethod
    def load(cls, store: ModelStore) -> WholeImageScenario:
        model, extra = store.classifier(cls.name)
        return cls(model, int(extra["input_size"]), int(extra["cache_side"]), store.classify(cls.name))

    def inputs(self, images: list[ImageInput]) -> Tensor:
        import torch

        return torch.stack([letterbox(im.pixels, self.input_size) for im in images])

    def score(self, batch: Batch) -> list[Finding]:
        return [Finding(p) for p in probabilities(self.classify, self.inputs(batch.images))]

    def settings(self) -> dict[str, Any]:
        return {"input_size": self.input_size}

    def explain_input(self, image: ImageInput, finding: Finding) -> tuple[Tensor, tuple[int, int, int, int]]:
        h, w = image.pixels.shape[-2:]
        return letterbox(image.pixels, self.input_size), (0, 0, int(w), int(h))

    @classmethod
    def make_stage(cls, run: RunData, out: RunDir, resume: bool = False, progress: bool = False) -> WholeImageStage:
        return WholeImageStage(run)


class WholeImageStage(ClassifierStage):
    """The whole image, augmented, letterboxed; one logit."""

    name = WholeImageScenario.name

    def __init__(self, run: RunData):
        super().__init__(run, run.cfg.classifier.image_size)
        size = run.cfg.classifier.image_size
        self.train_set = join_sources([
            WholeImageDataset(source.ds, source.images, run.cache_side, size, self.augment)
            for source in run.train_sources
        ])
        self._set_pos_weight(self.train_set.labels)

    def train_loader(self, epoch: int, rank: int, world_size: int) -> DataLoader:
        t = self.cfg.train
        return train_loader(self.train_set, self.train_set.labels, self.cfg, epoch, rank, world_size,
                            t.batch_size, t.balance)

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        scenario = WholeImageScenario(model, self.cfg.classifier.image_size, self.run.cache_side)
        return validate_scenario(scenario, self.run)
