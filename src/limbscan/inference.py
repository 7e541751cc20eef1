"""Score radiographs with a bundle: ``model = limbscan.load("model.limbscan"); model.predict([...])``.

Every image goes through what training's cache did to it (read, resize, quantise) and then
through the very functions evaluation uses (``letterbox``, ``describe_detections``,
``crop_box``), so a file scored here gets the score ``score_run`` gives it in its dataset.

Per batch: the whole-image classifier sees all images at once; the detector runs once per
batch for both the detector and the cascade; the cascade classifier sees every crop of the
batch at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from limbscan.bundle import CHECKPOINT, read_manifest
from limbscan.data.cache import as_cached
from limbscan.data.torchdata import crop_box, letterbox
from limbscan.errors import BadInputError, LimbscanError
from limbscan.models import cascade_score
from limbscan.models.labels import ABNORMAL

log = logging.getLogger(__name__)

# Detections a Prediction lists (and masks it pastes): the detector keeps every box down to
# score 0 so images stay ranked, but past a handful they only clutter an overlay.
MAX_DETECTIONS = 5
MASK_THRESHOLD = 0.5  # torchvision's own cut for Mask R-CNN's mask probabilities
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
    probability: float  # P(abnormal) of the scenario
    threshold: float  # the bundle's operating point for that scenario
    label: str  # "abnormal" if probability >= threshold else "normal"
    scores: dict[str, float]  # every scenario run for this image
    detections: list[Detection] = field(default_factory=list)  # best first
    width: int = 0
    height: int = 0
    body_part: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; masks as COCO RLE ``{"size": [h, w], "counts": str}``."""
        return {
            "file": self.file,
            "scenario": self.scenario,
            "probability": float(self.probability),
            "threshold": float(self.threshold),
            "label": self.label,
            "scores": {k: float(v) for k, v in self.scores.items()},
            "detections": [
                {"box": [float(v) for v in d.box], "score": float(d.score),
                 "mask": None if d.mask is None else mask_to_rle(d.mask)}
                for d in self.detections
            ],
            "width": int(self.width),
            "height": int(self.height),
            "body_part": self.body_part,
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
    body_part: str | None


@dataclass
class _DetectorPass:
    outputs: list[dict]  # per image: boxes (cached pixels), scores, labels, as detector(pixels) gives them
    features: dict  # the FPN maps, for the mask head
    image_sizes: list[tuple[int, int]]  # the detector's input sizes
    resized: list[torch.Tensor]  # the boxes at the detector's input scale
    has_masks: bool


class _OnnxClassifier:
    """An ONNX Runtime session called like the torch classifier: [B, 1, S, S] -> logits [B]."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.session.run(["logit"], {self.input: x.numpy()})[0]
        return torch.from_numpy(logit)


class Model:
    """A loaded bundle. ``predict`` for lists of files or arrays, ``iter_predict`` for batch jobs."""

    def __init__(self, path: str | Path, runtime: str = "torch"):
        from limbscan.eval.scoring import load_classifier
        from limbscan.train.scenarios import load_detector

        if runtime not in RUNTIMES:
            raise LimbscanError(f"runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.scenarios: list[str] = list(self.manifest["scenarios"])
        self.default_scenario: str = self.manifest["default_scenario"]
        self.runtime = runtime
        pre = self.manifest["preprocessing"]
        self.cache_side = int(pre["cache_side"])
        self._classifiers: dict[str, torch.nn.Module] = {}
        self._extra: dict[str, dict] = {}
        for name in ("whole-image", "cascade"):
            if name in self.scenarios:
                self._classifiers[name], self._extra[name] = load_classifier(self.path / name / CHECKPOINT)
        self._detector = None
        if "detector" in self.scenarios or "cascade" in self.scenarios:
            self._detector = load_detector(self.path / "detector" / CHECKPOINT).eval()
        self._run_classifier: dict[str, Any] = dict(self._classifiers)
        if runtime == "onnx":
            onnx_files = self.manifest.get("onnx") or {}
            for name in self._classifiers:
                if name not in onnx_files:
                    raise LimbscanError(f"{self.path}: no ONNX file for {name}; export with --onnx")
                self._run_classifier[name] = _OnnxClassifier(self.path / onnx_files[name])

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, scenarios={self.scenarios}, default={self.default_scenario!r})"

    # -- small accessors ---------------------------------------------------------------------
    def threshold(self, scenario: str | None = None) -> float:
        name = self._check_scenario(scenario or self.default_scenario)
        return float(self.manifest["thresholds"][name])

    def classifier(self, scenario: str) -> torch.nn.Module:
        """The whole-image or cascade classifier (torch, eval mode), e.g. for Grad-CAM."""
        if scenario not in self._classifiers:
            have = ", ".join(self._classifiers) or "none"
            raise LimbscanError(f"{self.path}: no {scenario!r} classifier in this bundle (it has: {have})")
        return self._classifiers[scenario]

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """1 x h x w float tensor: the image resized and quantised exactly as training's cache did."""
        return torch.from_numpy(as_cached(pixels, self.cache_side))[None]

    def input_size(self, scenario: str) -> int:
        """The side of the square the scenario's classifier takes (whole image or crop)."""
        return int(self._extra[scenario]["input_size"]) if scenario in self._extra else 0

    def _check_scenario(self, name: str) -> str:
        if name not in self.scenarios:
            raise LimbscanError(f"scenario {name!r} is not in this bundle (it has: {', '.join(self.scenarios)})")
        return name

    def _plan(self, scenario: str | None) -> tuple[str, list[str]]:
        """(the scenario a Prediction reports, every scenario to run)."""
        if scenario == "all":
            return self.default_scenario, list(self.scenarios)
        name = self._check_scenario(scenario or self.default_scenario)
        # A cascade runs the detector anyway; its score comes free.
        extra = ["detector"] if name == "cascade" and "detector" in self.scenarios else []
        return name, [name, *extra]

    # -- prediction --------------------------------------------------------------------------
    def predict(
        self,
        inputs: Sequence[str | Path | np.ndarray],
        scenario: str | None = None,
        batch_size: int = 1,
        masks: bool = True,
        progress: bool = False,
    ) -> list[Prediction]:
        """Score files (DICOM, PNG, JPEG) or arrays (float HxW in [0, 1]); raises on the first bad input."""
        if isinstance(inputs, (str, Path, np.ndarray)):
            inputs = [inputs]
        results = []
        for _, result in self._iter(list(inputs), scenario, batch_size, masks, progress):
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
    ) -> Iterator[tuple[str, Prediction | BadInputError]]:
        """``(path, Prediction)`` for every input in order; a bad file gives its BadInputError instead."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        for name, result in self._iter(list(paths), scenario, batch_size, masks, progress):
            yield str(name), result

    def _iter(
        self, items: list, scenario: str | None, batch_size: int, masks: bool, progress: bool
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
            scored = iter(self._score_safely(good, shown, names, masks))
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
            return _Image(None, f"<array {index}>", self.preprocess(pixels), pixels.shape[1], pixels.shape[0], None)
        try:
            pixels, meta = read_image(item)
        except BadInputError as err:
            return err
        except Exception as err:  # noqa: BLE001 - one odd file must not end a batch job
            # Only the type: a third-party message could quote a header value with patient data.
            return BadInputError(item, f"could not decode the image ({type(err).__name__})")
        return _Image(str(item), str(item), self.preprocess(pixels), pixels.shape[1], pixels.shape[0], meta.body_part)

    def _score_safely(self, images: list[_Image], shown: str, names: list[str], masks: bool) -> list:
        """The batch's predictions; if the batch fails, each image alone, so one odd image
        (too small to crop, say) costs only itself."""
        if not images:
            return []
        try:
            return self._score(images, shown, names, masks)
        except (ValueError, RuntimeError, BadInputError) as err:
            if len(images) == 1:
                if isinstance(err, BadInputError):
                    return [err]
                return [BadInputError(images[0].name,
                                      f"could not be scored ({type(err).__name__}: the models cannot take it)")]
        return [r for image in images for r in self._score_safely([image], shown, names, masks)]

    @torch.inference_mode()
    def _score(self, images: list[_Image], shown: str, names: list[str], masks: bool) -> list[Prediction]:
        from limbscan.train.scenarios import describe_detections

        scores: list[dict[str, float]] = [{} for _ in images]
        detections: list[dict[str, list[Detection]]] = [{} for _ in images]
        if "whole-image" in names:
            size = self.input_size("whole-image")
            x = torch.stack([letterbox(im.pixels, size) for im in images])
            for s, p in zip(scores, self._probabilities("whole-image", x), strict=True):
                s["whole-image"] = p
        if "detector" in names or "cascade" in names:
            top_k = int(self._extra["cascade"]["top_k"]) if "cascade" in names else 1
            # Only images of one size share a detector pass: torchvision pads a batch to its
            # largest image, and the padding changes the RPN's anchors and so the scores. Grouped
            # by size, an image's score is the same whatever else is in the batch.
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, im in enumerate(images):
                groups.setdefault(tuple(im.pixels.shape), []).append(i)
            runs = [(idx, self._detect([images[i].pixels for i in idx])) for idx in groups.values()]
            outputs: list[dict] = [{}] * len(images)
            for idx, run in runs:
                for i, out in zip(idx, run.outputs, strict=True):
                    outputs[i] = out
            found = [
                describe_detections({"width": im.width, "height": im.height}, im.pixels, out, top_k)
                for im, out in zip(images, outputs, strict=True)
            ]
            if "detector" in names:
                for i, (im, info) in enumerate(zip(images, found, strict=True)):
                    scores[i]["detector"] = float(info["score"])
                    detections[i]["detector"] = [
                        Detection(_clip(box, im), float(score))
                        for box, score in zip(info["boxes"][:MAX_DETECTIONS], info["box_scores"], strict=False)
                    ]
            if "cascade" in names:
                self._cascade(images, found, scores, detections)
            if masks and shown != "whole-image":
                for idx, run in runs:
                    if run.has_masks:
                        self._attach_masks(run, [images[i] for i in idx], [detections[i].get(shown, []) for i in idx])
        out = []
        for im, s, d in zip(images, scores, detections, strict=True):
            probability = s[shown]
            threshold = self.threshold(shown)
            out.append(Prediction(
                file=im.file, scenario=shown, probability=probability, threshold=threshold,
                label="abnormal" if probability >= threshold else "normal",
                scores={name: s[name] for name in self.scenarios if name in s},
                detections=d.get(shown, []), width=im.width, height=im.height, body_part=im.body_part,
            ))
        return out

    def _cascade(self, images: list[_Image], found: list[dict], scores: list[dict], detections: list[dict]) -> None:
        """Crop each image's top-k boxes (the whole image where there is none), classify every
        crop of the batch at once, score each image by its best crop (fused with the detector's score by
        the checkpoint's ``cascade_score`` rule); each box keeps its own crop's probability."""
        extra = self._extra["cascade"]
        size, margin = int(extra["input_size"]), float(extra["crop_margin"])
        rule = str(extra.get("cascade_score", "crop"))
        owners, boxes, crops = [], [], []
        for i, (im, info) in enumerate(zip(images, found, strict=True)):
            sx, sy = im.pixels.shape[-1] / im.width, im.pixels.shape[-2] / im.height
            for box in info["top"] or [[0.0, 0.0, float(im.width), float(im.height)]]:
                x0, y0, x1, y1 = (float(v) for v in box)
                crops.append(crop_box(im.pixels, [x0 * sx, y0 * sy, x1 * sx, y1 * sy], margin, size))
                owners.append(i)
                boxes.append([x0, y0, x1, y1])
        probabilities = self._probabilities("cascade", torch.stack(crops))
        for i, im in enumerate(images):
            mine = sorted((j for j, o in enumerate(owners) if o == i), key=lambda j: -probabilities[j])
            scores[i]["cascade"] = cascade_score(max(probabilities[j] for j in mine), found[i]["score"], rule)
            detections[i]["cascade"] = [Detection(_clip(boxes[j], im), probabilities[j]) for j in mine]

    def _detect(self, pixels: list[torch.Tensor]) -> _DetectorPass:
        """What ``detector(pixels)`` returns in eval mode, less the masks, plus what the mask
        head needs to draw masks later for the few boxes a Prediction shows.

        torchvision's Mask R-CNN draws a mask for every box it keeps (20 by default, down to
        score 0); its mask head then costs about half the detector. The steps below are those of
        ``GeneralizedRCNN.forward`` and ``RoIHeads.forward`` (eval), so boxes and scores are
        identical to the full forward's.
        """
        det = self._detector
        heads = det.roi_heads
        sizes = [(int(p.shape[-2]), int(p.shape[-1])) for p in pixels]
        batch, _ = det.transform(pixels)
        features = det.backbone(batch.tensors)
        proposals, _ = det.rpn(batch, features)
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        boxes, box_scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals,
                                                                 batch.image_sizes)
        resized = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(boxes, box_scores, labels)]
        outputs = det.transform.postprocess([dict(r) for r in resized], batch.image_sizes, sizes)
        return _DetectorPass(outputs, features, list(batch.image_sizes), [r["boxes"] for r in resized],
                             heads.has_mask())

    def _attach_masks(self, run: _DetectorPass, images: list[_Image], detections: list[list[Detection]]) -> None:
        """Mask R-CNN's masks for the detections shown (matched to the detector's boxes by
        position), pasted straight into ORIGINAL pixels, one pass of the mask head for the
        batch; a box the detector did not output (the cascade's whole-image fallback) keeps
        mask None."""
        from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image

        heads = self._detector.roi_heads
        picks: list[list[int]] = []
        targets: list[list[Detection]] = []
        for im, out, shown in zip(images, run.outputs, detections, strict=True):
            scale = torch.tensor([im.width / im.pixels.shape[-1], im.height / im.pixels.shape[-2]] * 2)
            original = out["boxes"] * scale
            abnormal = out["labels"] == ABNORMAL
            mine, dets = [], []
            for d in shown:
                j = _match(original, abnormal, d.box)
                if j is not None:
                    mine.append(j)
                    dets.append(d)
            picks.append(mine)
            targets.append(dets)
        if not any(picks):
            return
        boxes = [run.resized[i][p] for i, p in enumerate(picks)]
        labels = [out["labels"][p] for out, p in zip(run.outputs, picks, strict=True)]
        logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(run.features, boxes, run.image_sizes)))
        for im, out, p, probs, dets in zip(images, run.outputs, picks, maskrcnn_inference(logits, labels), targets,
                                            strict=True):
            if not p:
                continue
            scale = torch.tensor([im.width / im.pixels.shape[-1], im.height / im.pixels.shape[-2]] * 2)
            pasted = paste_masks_in_image(probs, out["boxes"][p] * scale, (im.height, im.width))
            for d, mask in zip(dets, pasted[:, 0] >= MASK_THRESHOLD, strict=True):
                d.mask = mask.numpy()

    def _probabilities(self, scenario: str, x: torch.Tensor) -> list[float]:
        return torch.sigmoid(self._run_classifier[scenario](x).float()).tolist()


def _match(boxes: torch.Tensor, abnormal: torch.Tensor, box: Sequence[float]) -> int | None:
    """The index of the detector box at ``box`` (original pixels; the cascade's are rounded to
    0.01 px by describe_detections), an abnormal one first; None if there is none."""
    if not len(boxes):
        return None
    # 0.02 px covers the rounding; the clip to the image moves a box by float noise only
    close = ((boxes - torch.tensor(box)).abs().amax(dim=1) < 0.02).nonzero().flatten().tolist()
    if not close:
        return None
    return next((c for c in close if abnormal[c]), close[0])


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


def load(path: str | Path, runtime: str = "torch") -> Model:
    """Load a bundle made by ``limbscan export``; checks its files against bundle.json."""
    return Model(path, runtime=runtime)


__all__ = ["MAX_DETECTIONS", "Detection", "Model", "Prediction", "load", "mask_to_rle", "rle_to_mask"]
