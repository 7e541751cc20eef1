"""What every scenario is: :class:`Scenario`, and the inputs and outputs of its scoring.

A scenario scores a :class:`Batch` of :class:`ImageInput` (pixels exactly as training saw them:
read, resized to the cache's longest side, quantised) into one :class:`Finding` per image: the
probability of abnormal and, where it localises, boxes in ORIGINAL pixels. What two scenarios of
one call both need (the detector's pass) is computed once per batch. The same object scores for
training's validation, ``evaluate``, ``predict``, ``serve`` and Grad-CAM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from limbscan.errors import LimbscanError
from limbscan.models.loading import load_checkpoint
from limbscan.rundir import RunDir

if TYPE_CHECKING:
    from limbscan.data.dataset import Dataset
    from limbscan.models.detector import Detector, DetectorPass

Classify = Callable[[Tensor], Tensor]  # [B, 1, S, S] in [0, 1] -> logits [B]


@dataclass
class ImageInput:
    """One image ready to score: pixels at cache scale (1 x h x w float32 in [0, 1]), original size."""

    pixels: Tensor
    width: int
    height: int

    @classmethod
    def from_dataset(cls, ds: Dataset, image: dict, cache_side: int) -> ImageInput:
        from limbscan.data.cache import load_cached

        pixels = torch.from_numpy(load_cached(ds, image, cache_side))[None]
        return cls(pixels, int(image["width"]), int(image["height"]))

    def to_cache_scale(self, box: Sequence[float]) -> list[float]:
        """A box in ORIGINAL pixels -> in ``pixels``' pixels."""
        sx, sy = self.pixels.shape[-1] / self.width, self.pixels.shape[-2] / self.height
        x0, y0, x1, y1 = (float(v) for v in box)
        return [x0 * sx, y0 * sy, x1 * sx, y1 * sy]

    def whole_box(self) -> list[float]:
        return [0.0, 0.0, float(self.width), float(self.height)]


@dataclass
class Finding:
    """One scenario's result on one image."""

    score: float  # P(abnormal) as the scenario scores it
    boxes: list[list[float]] = field(default_factory=list)  # XYXY, ORIGINAL pixels, best first
    box_scores: list[float] = field(default_factory=list)  # each box's own score
    detector_boxes: bool = False  # the boxes came from the detector (it can draw their masks)
    boxes_from: str | None = None  # the scenario whose boxes these are


class Batch:
    """Images scored together. The detector's pass over them runs once, whoever asks first, and
    so does each scenario's scoring (:meth:`findings`: the fused scenario asks for the others')."""

    def __init__(self, images: Sequence[ImageInput], detector_batch_size: int = 1):
        self.images = list(images)
        self.detector_batch_size = detector_batch_size
        self._detector_runs: dict[int, list[tuple[dict, DetectorPass, int]]] = {}
        self._findings: dict[int, tuple[Scenario, list[Finding]]] = {}

    def __len__(self) -> int:
        return len(self.images)

    def findings(self, scenario: Scenario) -> list[Finding]:
        """``scenario.score(self)``, computed once per scenario object for this batch."""
        key = id(scenario)
        if key not in self._findings:
            # The scenario is kept beside its findings, so its id cannot be reused while they are.
            self._findings[key] = (scenario, scenario.score(self))
        return self._findings[key][1]

    def detector_outputs(self, detector: Detector) -> list[tuple[dict, DetectorPass, int]]:
        """Per image: the detector's raw output and the pass it came from (see ``run_detector``)."""
        from limbscan.models.detector import run_detector

        key = id(detector)
        if key not in self._detector_runs:
            self._detector_runs[key] = run_detector(detector, [im.pixels for im in self.images],
                                                    self.detector_batch_size)
        return self._detector_runs[key]

    def detections(self, detector: Detector, top_k: int) -> list[Any]:
        """Per image: :class:`~limbscan.models.detector.Detections` in ORIGINAL pixels."""
        from limbscan.models.detector import describe_detections

        return [
            describe_detections(out, im.width, im.height, tuple(im.pixels.shape[-2:]), top_k)
            for im, (out, _, _) in zip(self.images, self.detector_outputs(detector), strict=True)
        ]

    def masks(self, detector: Detector, index: int, boxes: Sequence[Sequence[float]]) -> list[np.ndarray | None]:
        """Mask R-CNN's masks (ORIGINAL pixels) for boxes the detector output on image ``index``."""
        out, run, j = self.detector_outputs(detector)[index]
        im = self.images[index]
        return detector.masks(run, j, boxes, im.width, im.height, tuple(im.pixels.shape[-2:]))


class ModelStore:
    """The models of one run or bundle folder, each loaded once: the detector and the cascade
    share one detector, the fused scenario the others' objects. ``runtime="onnx"`` swaps the
    classifiers for ONNX Runtime sessions."""

    def __init__(self, folder: str | Path, runtime: str = "torch", onnx_files: dict[str, str] | None = None):
        self.folder = RunDir(folder)
        self.runtime = runtime
        self.onnx_files = onnx_files or {}
        self._checkpoints: dict[str, dict] = {}
        self._models: dict[str, Any] = {}
        self._scenarios: dict[str, Scenario] = {}

    def scenario(self, name: str) -> Scenario:
        """The scenario ``name`` loaded from this folder, once."""
        from limbscan.scenarios import scenario_class

        if name not in self._scenarios:
            self._scenarios[name] = scenario_class(name).load(self)
        return self._scenarios[name]

    def checkpoint(self, scenario: str) -> dict[str, Any]:
        if scenario not in self._checkpoints:
            self._checkpoints[scenario] = load_checkpoint(self.folder.best(scenario))
        return self._checkpoints[scenario]

    def detector(self) -> Detector:
        from limbscan.models.loading import load_detector

        if "detector" not in self._models:
            self._models["detector"] = load_detector(self.folder.best("detector"), self.checkpoint("detector"))
        return self._models["detector"]

    def classifier(self, scenario: str) -> tuple[nn.Module, dict[str, Any]]:
        """A scenario's classifier (eval mode) and its checkpoint's ``extra``."""
        from limbscan.models.loading import load_classifier

        if scenario not in self._models:
            self._models[scenario] = load_classifier(self.folder.best(scenario), self.checkpoint(scenario))
        return self._models[scenario]

    def classify(self, scenario: str) -> Classify:
        """What turns a scenario's classifier inputs into logits: the torch model, or its ONNX file."""
        model, _ = self.classifier(scenario)
        if self.runtime != "onnx":
            return model
        if scenario not in self.onnx_files:
            raise LimbscanError(f"{self.folder.root}: no ONNX file for {scenario}; export with --onnx")
        return OnnxClassifier(self.folder.root / self.onnx_files[scenario])


def recorded(extra: dict[str, Any], key: str, scenario: str, where: str | Path = "") -> Any:
    """``extra[key]`` of a ``scenario`` checkpoint (``where``: its path, for the message); a
    checkpoint that does not record the setting gets a :class:`LimbscanError` naming it."""
    if key not in extra:
        raise LimbscanError(
            f"{where or f'the {scenario} checkpoint'}: records no {key!r}; retrain the {scenario} stage "
            f"(`limbscan train DS -o RUN --scenario {scenario}`) and export the bundle again"
        )
    return extra[key]


class OnnxClassifier:
    """An ONNX Runtime session called like the torch classifier: [B, 1, S, S] -> logits [B]."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        logit = self.session.run(["logit"], {self.input: x.numpy()})[0]
        return torch.from_numpy(logit)


CLASSIFY_CHUNK = 32  # classifier inputs per forward: bounds memory whatever the batch


def probabilities(classify: Classify, x: Tensor) -> list[float]:
    """sigmoid(logit) per input: every classifier scenario's score."""
    if isinstance(classify, nn.Module):
        x = x.to(next(classify.parameters()).device)
    return [p for i in range(0, len(x), CLASSIFY_CHUNK)
            for p in torch.sigmoid(classify(x[i : i + CLASSIFY_CHUNK]).float()).cpu().tolist()]


class Scenario(ABC):
    """One way of scoring an image, registered in :mod:`limbscan.scenarios`.

    A subclass sets ``name``, builds itself from a run or bundle folder (:meth:`load`) and scores a
    batch (:meth:`score`). ``cache_side`` is the longest side its images are resized to;
    ``classifier`` its CNN where it has one (Grad-CAM explains that one). How it trains is not
    its business: its training stage asks it for its scoring, never the other way round.
    """

    name: ClassVar[str]
    cache_side: int
    classifier: nn.Module | None = None
    # How explain_input's square input shows its window: "letterbox" (padded) or "squash".
    input_resize: str = "letterbox"

    @classmethod
    @abstractmethod
    def load(cls, store: ModelStore) -> Scenario:
        """The scenario with its trained models, from ``store``'s folder (a run or a bundle)."""

    @abstractmethod
    def score(self, batch: Batch) -> list[Finding]:
        """One :class:`Finding` per image of ``batch``, in order."""

    def settings(self) -> dict[str, Any]:
        """What a bundle's manifest records of how this scenario scores (sizes, rules)."""
        return {}

    @classmethod
    def held_out_scores(cls, store: ModelStore, image_ids: Sequence[int]) -> list[float] | None:
        """The validation scores thresholds are chosen on, where they are not what :meth:`score`
        gives: a scenario FITTED on the validation images (fused) returns its out-of-fold scores
        for ``image_ids``, in that order. None (every other scenario): :meth:`score`'s."""
        return None

    def explain_input(self, image: ImageInput, finding: Finding) -> tuple[Tensor, tuple[int, int, int, int]]:
        """For Grad-CAM: the classifier's input for ``image`` ([1, S, S], letterboxed) and the
        window (x0, y0, x1, y1, in ``image.pixels``' pixels) it shows."""
        raise LimbscanError(f"Grad-CAM needs a classifier: scenario {self.name!r} has none")


def load_scenarios(store: ModelStore, names: Iterable[str]) -> dict[str, Scenario]:
    """The named scenarios from one folder, sharing its models (and, for the fused scenario, the
    other scenarios' objects, so a batch scores each once)."""
    return {name: store.scenario(name) for name in names}


def score_images(
    scenarios: dict[str, Scenario],
    images: Iterable[ImageInput],
    chunk: int = 16,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, list[Finding]]:
    """Every scenario's findings on ``images``, ``chunk`` images per :class:`Batch` (the detector
    still sees one image per forward)."""
    found: dict[str, list[Finding]] = {name: [] for name in scenarios}
    pending: list[ImageInput] = []

    def flush() -> None:
        if pending:
            batch = Batch(pending)
            for name, scenario in scenarios.items():
                found[name].extend(batch.findings(scenario))
            pending.clear()

    with torch.inference_mode():
        for image in progress(images) if progress else images:
            pending.append(image)
            if len(pending) >= chunk:
                flush()
        flush()
    return found


__all__ = [
    "Batch",
    "Finding",
    "ImageInput",
    "ModelStore",
    "Scenario",
    "load_scenarios",
    "probabilities",
    "score_images",
]
