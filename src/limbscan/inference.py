"""Score radiographs with a bundle: ``predictor = limbscan.load("model.limbscan"); predictor.predict([...])``.

Every file is read and preprocessed as training's cache did (read, resize, quantise), then
scored by the bundle's scenarios through their registered objects (:mod:`limbscan.scenarios`):
the very code ``evaluate`` and training's validation score with, so a file scored here gets the
score its dataset's image gets there. Per batch the detector runs once (one forward per image,
or per same-size group) for every scenario that needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from limbscan.bundle.manifest import read_manifest
from limbscan.data.cache import as_cached
from limbscan.errors import BadInputError, LimbscanError
from limbscan.gate import GATE_OFF, OUT_OF_SCOPE, ScopeVerdict
from limbscan.gate.model import GATE_FILE, PixelGate, scope_verdicts
from limbscan.io.meta import ImageMeta
from limbscan.operating_points import level_of, stored_thresholds
from limbscan.scenarios import info
from limbscan.scenarios.base import Batch, Finding, ImageInput, ModelStore, Scenario, load_scenarios

log = logging.getLogger(__name__)

# Detections a Prediction lists (and masks it pastes): the detector keeps every box down to
# score 0 so images stay ranked, but past a handful they only clutter an overlay.
MAX_DETECTIONS = 5
RUNTIMES = ("torch", "onnx")


@dataclass
class Detection:
    box: list[float]  # [x0, y0, x1, y1] in ORIGINAL image pixels
    score: float  # cascade: the crop classifier's probability; detector: the abnormal-class score
    mask: np.ndarray | None = None  # bool H x W in ORIGINAL pixels


@dataclass
class Prediction:
    file: str | None  # as given by the caller (None for arrays)
    scenario: str
    probability: float | None  # P(abnormal) of the scenario; None when the gate kept it out of scope
    threshold: float  # the bundle's balanced ("likely") operating point for that scenario
    label: str  # "abnormal" if probability >= threshold else "normal"; "out_of_scope" when not scored
    scores: dict[str, float]  # every scenario run for this image
    detections: list[Detection] = field(default_factory=list)  # best first
    width: int = 0
    height: int = 0
    body_part: str | None = None
    # The high-sensitivity ("suspected") operating point; None for a bundle exported without one.
    suspected_threshold: float | None = None
    # The input gate's verdict (limbscan.gate); None where nobody asked it (scored as given).
    scope: ScopeVerdict | None = None
    # Who drew the boxes (limbscan.localise): "detector", "cascade" or "gradcam"; None without boxes.
    boxes_from: str | None = None

    @property
    def in_scope(self) -> bool:
        return self.probability is not None

    @property
    def level(self) -> str:
        """"likely", "suspected" or "normal" (see :mod:`limbscan.operating_points`): derived from
        the probability and the two thresholds, so it can never disagree with them; "out_of_scope"
        for an image the gate kept from scoring."""
        if self.probability is None:
            return OUT_OF_SCOPE
        return level_of(self.probability, self.threshold, self.suspected_threshold)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; masks as COCO RLE ``{"size": [h, w], "counts": str}``."""
        return {
            "file": self.file,
            "scenario": self.scenario,
            "probability": None if self.probability is None else float(self.probability),
            "threshold": float(self.threshold),
            "label": self.label,
            "level": self.level,
            "suspected_threshold": None if self.suspected_threshold is None else float(self.suspected_threshold),
            "scores": {k: float(v) for k, v in self.scores.items()},
            "detections": [
                {"box": [float(v) for v in d.box], "score": float(d.score),
                 "mask": None if d.mask is None else mask_to_rle(d.mask)}
                for d in self.detections
            ],
            "width": int(self.width),
            "height": int(self.height),
            "body_part": self.body_part,
            "scope": None if self.scope is None else self.scope.to_json(),
            "boxes_from": self.boxes_from,
        }


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


@dataclass
class _Image:
    """One input, read: the caller's name for it, its pixels at cache scale, its size."""

    file: str | None
    name: str  # for error messages: the path, or "<array i>"
    pixels: torch.Tensor  # 1 x h x w, exactly as training saw it
    width: int
    height: int
    meta: ImageMeta | None  # None for arrays
    original: np.ndarray | None = None  # the pixels as read, for the input gate (which trained on them)

    @property
    def body_part(self) -> str | None:
        return None if self.meta is None else self.meta.body_part


class Predictor:
    """A loaded bundle (not an ``nn.Module``: it holds one per scenario). ``predict`` for lists of
    files or arrays, ``iter_predict`` for batch jobs."""

    def __init__(self, path: str | Path, runtime: str = "torch"):
        if runtime not in RUNTIMES:
            raise LimbscanError(f"runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.scenarios: list[str] = list(self.manifest["scenarios"])
        self.default_scenario: str = self.manifest["default_scenario"]
        # Why the bundle chose it (bundles exported before the fused scenario say nothing).
        self.default_reason: str | None = self.manifest.get("default_reason")
        self.runtime = runtime
        self.cache_side = int(self.manifest["preprocessing"]["cache_side"])
        store = ModelStore(self.path, runtime, self.manifest.get("onnx") or {})
        self._scenarios: dict[str, Scenario] = load_scenarios(store, self.scenarios)
        # The input gate's pixel check (bundle.json "gate"); None: a bundle exported without one,
        # where only DICOM headers can keep an image out of scope.
        self.gate: PixelGate | None = PixelGate.load(self.path / GATE_FILE) if self.manifest.get("gate") else None

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, scenarios={self.scenarios}, default={self.default_scenario!r})"

    # -- small accessors ---------------------------------------------------------------------
    def threshold(self, scenario: str | None = None) -> float:
        """The balanced ("likely") operating point: ``label`` is "abnormal" at or above it."""
        return self.thresholds(scenario)[0]

    def suspected_threshold(self, scenario: str | None = None) -> float | None:
        """The high-sensitivity ("suspected") operating point; None for a bundle exported without one."""
        return self.thresholds(scenario)[1]

    def thresholds(self, scenario: str | None = None) -> tuple[float, float | None]:
        """(likely, suspected) of the scenario (default: the default scenario), as the bundle stores them."""
        return stored_thresholds(self.manifest, self._check_scenario(scenario or self.default_scenario))

    def scenario(self, name: str | None = None) -> Scenario:
        """The bundle's scenario object (default: the default scenario)."""
        return self._scenarios[self._check_scenario(name or self.default_scenario)]

    def classifier(self, scenario: str) -> torch.nn.Module:
        """A classifier scenario's CNN (torch, eval mode), e.g. for Grad-CAM."""
        found = self._scenarios.get(scenario)
        if found is None or found.classifier is None:
            have = ", ".join(n for n, s in self._scenarios.items() if s.classifier is not None) or "none"
            raise LimbscanError(f"{self.path}: no {scenario!r} classifier in this bundle (it has: {have})")
        return found.classifier

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """1 x h x w float tensor: the image resized and quantised exactly as training's cache did."""
        return torch.from_numpy(as_cached(pixels, self.cache_side))[None]

    def input_size(self, scenario: str) -> int:
        """The side of the square the scenario's classifier takes (whole image or crop); 0 for none."""
        found = self._scenarios.get(scenario)
        return int(found.settings().get("input_size", 0)) if found is not None else 0

    def _check_scenario(self, name: str) -> str:
        if name not in self.scenarios:
            raise LimbscanError(f"scenario {name!r} is not in this bundle (it has: {', '.join(self.scenarios)})")
        return name

    def _plan(self, scenario: str | None) -> tuple[str, list[str]]:
        """(the scenario a Prediction reports, every scenario to run)."""
        if scenario == "all":
            return self.default_scenario, list(self.scenarios)
        name = self._check_scenario(scenario or self.default_scenario)
        # A scenario runs the ones it needs anyway (the cascade, the detector): their scores come free.
        extra = [need for need in info(name).needs if need in self.scenarios]
        return name, [name, *extra]

    # -- prediction --------------------------------------------------------------------------
    def scope(self, pixels: Sequence[np.ndarray], metas: Sequence[ImageMeta | None],
              gate: bool = True) -> list[ScopeVerdict]:
        """The input gate's verdict on each image: its DICOM header where that decides, else its
        pixels (the bundle's gate), else in scope. ``gate=False``: every image in scope, unasked."""
        return scope_verdicts(self.gate, pixels, metas) if gate else [GATE_OFF] * len(pixels)

    def predict(
        self,
        inputs: Sequence[str | Path | np.ndarray],
        scenario: str | None = None,
        batch_size: int = 1,
        masks: bool = True,
        progress: bool = False,
        gate: bool = True,
    ) -> list[Prediction]:
        """Score files (DICOM, PNG, JPEG) or arrays (float HxW in [0, 1]); raises on the first bad input.

        ``gate``: ask the input gate first; an image it keeps out of scope comes back unscored
        (probability None, level "out_of_scope", ``scope.reason`` says why).
        """
        if isinstance(inputs, (str, Path, np.ndarray)):
            inputs = [inputs]
        results = []
        for _, result in self._iter(list(inputs), scenario, batch_size, masks, progress, gate):
            if isinstance(result, BadInputError):
                raise result
            results.append(result)
        return results

    def iter_predict(
        self,
        paths: Sequence[str | Path],
        scenario: str | None = None,
        batch_size: int = 1,
        masks: bool = True,
        progress: bool = False,
        gate: bool = True,
    ) -> Iterator[tuple[str, Prediction | BadInputError]]:
        """``(path, Prediction)`` for every input in order; a bad file gives its BadInputError instead."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        for name, result in self._iter(list(paths), scenario, batch_size, masks, progress, gate):
            yield str(name), result

    def predict_read(
        self, images: Sequence[tuple[np.ndarray, ImageMeta | None]], scenario: str | None = None,
        masks: bool = True, gate: bool = True,
    ) -> list[Prediction | BadInputError]:
        """Score images already read (pixels and their metadata, as :func:`limbscan.io.read_image`
        returns them), as one batch; an image that cannot be scored gives its BadInputError."""
        shown, names = self._plan(scenario)
        read = [_Image(None, f"<image {i}>", self.preprocess(_as_pixels(pixels, f"<image {i}>")),
                       pixels.shape[1], pixels.shape[0], meta, pixels) for i, (pixels, meta) in enumerate(images)]
        return self._score_safely(read, shown, names, masks, gate)

    def _iter(
        self, items: list, scenario: str | None, batch_size: int, masks: bool, progress: bool, gate: bool = True
    ) -> Iterator[tuple[str, Prediction | BadInputError]]:
        from rich.progress import track

        if batch_size < 1:
            raise LimbscanError(f"batch_size must be >= 1, got {batch_size}")
        shown, names = self._plan(scenario)
        starts = range(0, len(items), batch_size)
        for start in track(starts, description="predict", disable=not progress, transient=True):
            batch = items[start : start + batch_size]
            read: list[_Image | BadInputError] = [self._read(item, start + i) for i, item in enumerate(batch)]
            good = [im for im in read if isinstance(im, _Image)]
            scored = iter(self._score_safely(good, shown, names, masks, gate))
            for i, (item, im) in enumerate(zip(batch, read, strict=True)):
                name = f"<array {start + i}>" if isinstance(item, np.ndarray) else str(item)
                yield name, (im if isinstance(im, BadInputError) else next(scored))

    def _read(self, item: str | Path | np.ndarray, index: int) -> _Image | BadInputError:
        from limbscan.io import read_image

        if isinstance(item, np.ndarray):
            try:
                pixels = _as_pixels(item, f"<array {index}>")
            except BadInputError as err:
                return err
            return _Image(None, f"<array {index}>", self.preprocess(pixels), pixels.shape[1], pixels.shape[0], None,
                          pixels)
        try:
            pixels, meta = read_image(item)
        except BadInputError as err:
            return err
        except Exception as err:  # noqa: BLE001 - one odd file must not end a batch job
            # Only the type: a third-party message could quote a header value with patient data.
            return BadInputError(item, f"could not decode the image ({type(err).__name__})")
        return _Image(str(item), str(item), self.preprocess(pixels), pixels.shape[1], pixels.shape[0], meta, pixels)

    def _score_safely(self, images: list[_Image], shown: str, names: list[str], masks: bool, gate: bool) -> list:
        """The batch's predictions; if the batch fails, each image alone, so one odd image
        (too small to crop, say) costs only itself."""
        if not images:
            return []
        try:
            return self._score(images, shown, names, masks, gate)
        except (ValueError, RuntimeError, BadInputError) as err:
            if len(images) == 1:
                if isinstance(err, BadInputError):
                    return [err]
                return [BadInputError(images[0].name,
                                      f"could not be scored ({type(err).__name__}: the models cannot take it)")]
        return [r for image in images for r in self._score_safely([image], shown, names, masks, gate)]

    def _score(self, images: list[_Image], shown: str, names: list[str], masks: bool, gate: bool) -> list[Prediction]:
        verdicts = self.scope([im.original for im in images], [im.meta for im in images], gate)
        threshold, suspected = self.thresholds(shown)
        kept = [(im, v) for im, v in zip(images, verdicts, strict=True) if v.in_scope]
        with torch.inference_mode():
            found = self._score_in_scope(kept, shown, names, masks, threshold, suspected)
        # Outside inference mode: a Grad-CAM localiser needs gradients.
        self._localise([im for im, _ in kept], found, masks)
        scored = iter(found)
        return [next(scored) if v.in_scope else
                Prediction(file=im.file, scenario=shown, probability=None, threshold=threshold, label=OUT_OF_SCOPE,
                           scores={}, width=im.width, height=im.height, body_part=im.body_part,
                           suspected_threshold=suspected, scope=v)
                for im, v in zip(images, verdicts, strict=True)]

    def _localise(self, images: list[_Image], predictions: list[Prediction], masks: bool) -> None:
        """Give each likely or suspected prediction without boxes the bundle localiser's (limbscan.localise)."""
        from limbscan.localise import GRADCAM, gradcam_box, wanted

        name = (self.manifest.get("localiser") or {}).get("name")
        todo = wanted(name, predictions)
        if not todo:
            return
        if name == GRADCAM:
            for i in todo:
                found = gradcam_box(self, images[i].original, predictions[i])
                if found is not None:
                    predictions[i].detections = [Detection(_clip(found[0], images[i]), found[1])]
                    predictions[i].boxes_from = GRADCAM
            return
        scenario = self._scenarios[name]
        with torch.inference_mode():
            batch = Batch([ImageInput(images[i].pixels, images[i].width, images[i].height) for i in todo],
                          detector_batch_size=len(todo))
            for j, (i, finding) in enumerate(zip(todo, batch.findings(scenario), strict=True)):
                predictions[i].detections = _detections(batch, j, finding, scenario, images[i], masks)
                predictions[i].boxes_from = finding.boxes_from if predictions[i].detections else None

    def _score_in_scope(self, kept: list[tuple[_Image, ScopeVerdict]], shown: str, names: list[str], masks: bool,
                        threshold: float, suspected: float | None) -> list[Prediction]:
        if not kept:
            return []
        images = [im for im, _ in kept]
        inputs = [ImageInput(im.pixels, im.width, im.height) for im in images]
        # Same-size images of the batch share a detector forward (see run_detector).
        batch = Batch(inputs, detector_batch_size=len(inputs))
        found = {name: batch.findings(self._scenarios[name]) for name in self.scenarios if name in names}
        out = []
        for i, im in enumerate(images):
            finding: Finding = found[shown][i]
            detections = _detections(batch, i, finding, self._scenarios[shown], im, masks)
            probability = float(finding.score)
            out.append(Prediction(
                file=im.file, scenario=shown, probability=probability, threshold=threshold,
                label="abnormal" if probability >= threshold else "normal",
                scores={name: float(found[name][i].score) for name in found},
                detections=detections, width=im.width, height=im.height, body_part=im.body_part,
                suspected_threshold=suspected, scope=kept[i][1],
                boxes_from=finding.boxes_from if detections else None,
            ))
        return out


def _detections(batch: Batch, index: int, finding: Finding, scenario: Scenario, im: _Image,
                masks: bool) -> list[Detection]:
    """A finding's first boxes as Detections clipped to the image, with the detector's masks when asked."""
    detections = [Detection(_clip(box, im), float(score))
                  for box, score in zip(finding.boxes[:MAX_DETECTIONS], finding.box_scores, strict=False)]
    if masks and finding.detector_boxes and detections:
        detector = scenario.detector  # type: ignore[attr-defined]
        for d, mask in zip(detections, batch.masks(detector, index, finding.boxes[: len(detections)]), strict=True):
            d.mask = mask
    return detections


def _clip(box: Sequence[float], im: _Image) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = float(im.width), float(im.height)
    return [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]


def _as_pixels(array: np.ndarray, name: str) -> np.ndarray:
    """An array input as float32 H x W in [0, 1]; integer arrays are scaled by their type's maximum."""
    if array.ndim != 2:
        raise BadInputError(name, f"expected a grey H x W image, got shape {array.shape}")
    if min(array.shape) < 1:
        raise BadInputError(name, "empty image")
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        return (array.astype(np.float64) / np.iinfo(array.dtype).max).clip(0, 1).astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise BadInputError(name, f"expected float or integer pixels, got {array.dtype}")
    pixels = np.asarray(array, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise BadInputError(name, "holds NaN or infinite values")
    if pixels.min() < 0.0 or pixels.max() > 1.0:
        raise BadInputError(
            name, f"float pixels must lie in [0, 1], got [{pixels.min():.3g}, {pixels.max():.3g}] (scale them first)"
        )
    return pixels


# The name of earlier releases: ``limbscan.Model`` keeps working.
Model = Predictor


def load(path: str | Path | None = None, runtime: str = "torch") -> Predictor:
    """Load a bundle made by ``limbscan export`` (default: the model limbscan ships); checks its
    files against bundle.json."""
    if path is None:
        from limbscan.pretrained import shipped_bundle

        path = shipped_bundle()
    return Predictor(path, runtime=runtime)


__all__ = ["MAX_DETECTIONS", "Detection", "Model", "Prediction", "Predictor", "load", "mask_to_rle", "rle_to_mask"]
