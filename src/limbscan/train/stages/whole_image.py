"""The ``whole-image`` scenario's training stage: the classifier on whole images, augmented and
letterboxed (or squashed) to a square, validated through :class:`WholeImageScenario`'s scoring."""

from __future__ import annotations

from torch import nn
from torch.utils.data import DataLoader

from limbscan.data.datasets import WholeImageDataset, join_sources
from limbscan.rundir import RunDir
from limbscan.scenarios.whole_image import WholeImageScenario
from limbscan.train.stages.base import ClassifierStage, RunData, train_loader, validate_scenario


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

    @classmethod
    def for_run(cls, run: RunData, out: RunDir, resume: bool = False, progress: bool = False) -> WholeImageStage:
        return cls(run)

    def train_loader(self, epoch: int, rank: int, world_size: int) -> DataLoader:
        t = self.cfg.train
        return train_loader(self.train_set, self.train_set.labels, self.cfg, epoch, rank, world_size,
                            t.batch_size, t.balance)

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        c = self.cfg.classifier
        scenario = WholeImageScenario(model, c.image_size, self.run.cache_side, None, c.image_resize, c.tta_flip)
        return validate_scenario(scenario, self.run)
