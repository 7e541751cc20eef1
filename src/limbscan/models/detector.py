"""Mask R-CNN (torchvision) on a feature pyramid over any registry backbone.

Classes: 0 background, ``NORMAL`` (a normal image's whole-image box), ``ABNORMAL`` (a lesion).
Input: a list of ``[1, H, W]`` grey tensors in [0, 1], normalised with the training set's pixel
statistics, which travel in the checkpoint. The backbone's stride 8-32 maps (4-32 for ResNet and
DenseNet) feed torchvision's ``FeaturePyramidNetwork`` plus a pooled level. Pretrained: stem and
early stages frozen, every batch norm frozen (batches of 2); random init trains everything.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from limbscan.config import DetectorConfig
from limbscan.errors import LimbscanError
from limbscan.models.backbones import create_backbone, freeze_stages, get_spec
from limbscan.models.classifier import _param_groups
from limbscan.models.labels import ABNORMAL, NORMAL

__all__ = [
    "ABNORMAL",
    "NORMAL",
    "Detections",
    "Detector",
    "DetectorPass",
    "build_detector",
    "describe_detections",
    "run_detector",
    "detector_param_groups",
    "image_scores",
    "top_boxes",
]

ASPECT_RATIOS = (0.5, 1.0, 2.0)


class FeaturePyramid(nn.Module):
    """A backbone's list of maps -> FPN maps ``{"0", "1", ..., "pool"}``, what torchvision's heads read.

    Backbone and pyramid run channels-last (oneDNN's fast path on a CPU; benchmarks/train_speed.py
    measures it; :func:`~limbscan.models.backbones.set_memory_format` changes it); the maps
    leave contiguous, as the RoI heads' roi_align reads them.
    """

    memory_format = torch.channels_last

    def __init__(self, body: nn.Module, in_channels: tuple[int, ...], out_channels: int):
        super().__init__()
        self.body = body
        # Group norm in the pyramid: EfficientNet stages end in a linear bottleneck whose outputs
        # run to std ~10, and un-normalised they blow the mask loss up on the first steps
        # (measured: loss_mask 9 at init, NaN by step 4 at lr 5e-3). Group norm, not batch norm:
        # detection batches are 1-4 images.
        norm = partial(nn.GroupNorm, math.gcd(32, out_channels))
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm
        )
        self.out_channels = out_channels  # torchvision's detectors read this attribute
        self.to(memory_format=self.memory_format)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.fpn(OrderedDict(
            (str(i), f) for i, f in enumerate(self.body(x.contiguous(memory_format=self.memory_format)))
        ))
        return OrderedDict((name, m.contiguous()) for name, m in maps.items())


def anchor_sizes(strides: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Two anchor sides per level, 4 and 8 times its stride, for each map and the pooled one.

    torchvision's ResNet-FPN uses one (8 x stride); the lower one is added because fractures
    are small (FracAtlas lesions are often 20-60 px at detector size) and the RPN regresses
    better from an anchor near the box's size.
    """
    levels = (*strides, 2 * strides[-1])
    return tuple((4 * s, 8 * s) for s in levels)


MASK_THRESHOLD = 0.5  # torchvision's own cut for Mask R-CNN's mask probabilities
# A box given back for its mask is matched to the detector's boxes within this distance (original
# pixels): describe_detections rounds the cascade's boxes to 0.01 px.
MATCH_TOLERANCE_PX = 0.02


@dataclass
class DetectorPass:
    """One forward of the detector over a group of same-size images, less the masks, plus what
    the mask head needs to draw masks afterwards for the few boxes a caller shows."""

    outputs: list[dict]  # per image: boxes (input pixels), scores, labels, as detector(pixels) gives them
    features: dict  # the FPN maps, for the mask head
    image_sizes: list[tuple[int, int]]  # the detector's (resized) input sizes
    resized: list[Tensor]  # the boxes at the detector's input scale
    has_masks: bool


class Detector(MaskRCNN):
    """torchvision's :class:`MaskRCNN` with :meth:`detect`, the inference pass every caller uses.

    ``model(images)`` in eval mode draws a mask for every box it keeps (20 by default, down to
    score 0), and its mask head then costs about half the detector. :meth:`detect` runs the
    steps of ``GeneralizedRCNN.forward`` and ``RoIHeads.forward`` (eval) without the mask head,
    so boxes and scores are identical to the full forward's, and :meth:`masks` draws masks
    later for the boxes asked for. Same modules as ``MaskRCNN``: checkpoints load unchanged.
    """

    @torch.no_grad()
    def detect(self, pixels: list[Tensor]) -> DetectorPass:
        heads = self.roi_heads
        sizes = [(int(p.shape[-2]), int(p.shape[-1])) for p in pixels]
        device = next(self.parameters()).device
        batch, _ = self.transform([p.to(device) for p in pixels])
        features = self.backbone(batch.tensors)
        proposals, _ = self.rpn(batch, features)
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        boxes, box_scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals,
                                                                 batch.image_sizes)
        resized = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(boxes, box_scores, labels)]
        outputs = self.transform.postprocess([dict(r) for r in resized], batch.image_sizes, sizes)
        return DetectorPass(outputs, features, list(batch.image_sizes), [r["boxes"] for r in resized],
                            heads.has_mask())

    @torch.no_grad()
    def masks(self, run: DetectorPass, index: int, boxes: Sequence[Sequence[float]],
              width: int, height: int, pixels_hw: tuple[int, int]) -> list[np.ndarray | None]:
        """Boolean masks in ORIGINAL pixels (``height`` x ``width``) for ``boxes`` (original pixels)
        of image ``index`` of ``run``: each matched to the detector's own box at that place (an
        abnormal one first); a box the detector did not output (the cascade's whole-image
        fallback) gets None."""
        from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image

        if not run.has_masks or not boxes:
            return [None] * len(boxes)
        out = run.outputs[index]
        scale = torch.tensor([width / pixels_hw[1], height / pixels_hw[0]] * 2, device=out["boxes"].device)
        original = out["boxes"] * scale
        abnormal = out["labels"] == ABNORMAL
        picks = [_match(original, abnormal, box) for box in boxes]
        chosen = [p for p in picks if p is not None]
        if not chosen:
            return [None] * len(boxes)
        heads = self.roi_heads
        features = {k: v[index : index + 1] for k, v in run.features.items()}
        rois = [run.resized[index][chosen]]
        logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, rois, [run.image_sizes[index]])))
        probs = maskrcnn_inference(logits, [out["labels"][chosen]])[0]
        pasted = paste_masks_in_image(probs, original[chosen], (height, width))[:, 0] >= MASK_THRESHOLD
        found = iter(pasted.cpu().numpy())
        return [None if p is None else next(found) for p in picks]


def _match(boxes: Tensor, abnormal: Tensor, box: Sequence[float]) -> int | None:
    if not len(boxes):
        return None
    close = ((boxes.cpu() - torch.tensor([float(v) for v in box])).abs().amax(dim=1) < MATCH_TOLERANCE_PX)
    found = close.nonzero().flatten().tolist()
    if not found:
        return None
    return next((c for c in found if bool(abnormal[c])), found[0])


@dataclass
class Detections:
    """One image's detector output in ORIGINAL pixels: the detector scenario's score and boxes and
    the cascade's proposals, from one pass."""

    score: float  # best ABNORMAL box score; 0 where there is none
    boxes: list[list[float]]  # ABNORMAL boxes, best first
    box_scores: list[float]
    top: list[list[float]]  # the cascade's top-k boxes (see top_boxes), rounded to 0.01 px


def describe_detections(output: dict, width: int, height: int, pixels_hw: tuple[int, int], k: int) -> Detections:
    """An image's raw detector ``output`` (boxes in the ``pixels_hw`` input's pixels) in ORIGINAL
    pixels. ``top`` is rounded to 0.01 px so it survives a JSON round trip unchanged."""
    out = {key: value.detach().float().cpu() for key, value in output.items() if key != "masks"}
    out["labels"] = output["labels"].cpu()
    scale = torch.tensor([width / pixels_hw[1], height / pixels_hw[0]] * 2)
    abnormal = out["labels"] == ABNORMAL
    order = out["scores"][abnormal].argsort(descending=True)
    return Detections(
        score=float(image_scores([out])[0]),
        boxes=(out["boxes"][abnormal][order] * scale).tolist(),
        box_scores=out["scores"][abnormal][order].tolist(),
        top=[[round(float(v), 2) for v in box] for box in top_boxes(out, k) * scale],
    )


def run_detector(
    detector: Detector,
    pixels: Sequence[Tensor],
    batch_size: int = 1,
    progress: Callable[[list], list] | None = None,
) -> list[tuple[dict, DetectorPass, int]]:
    """THE detector pass: for every image, its raw output (boxes in its input's pixels) and the
    pass and index it came from (for :meth:`Detector.masks`).

    One image per forward by default. Only images of one size ever share a forward: torchvision
    pads a batch to its largest image, and the padding changes the RPN's anchors and so the
    scores. Grouped by size, an image's score does not depend on what else is in the batch.
    ``progress`` wraps the list of forwards (e.g. a rich ``track``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(pixels):
        groups.setdefault(tuple(p.shape), []).append(i)
    chunks = [idx[j : j + batch_size] for idx in groups.values() for j in range(0, len(idx), batch_size)]
    found: list = [None] * len(pixels)
    for chunk in progress(chunks) if progress else chunks:
        run = detector.detect([pixels[i] for i in chunk])
        for j, (i, out) in enumerate(zip(chunk, run.outputs, strict=True)):
            found[i] = (out, run, j)
    return found


def build_detector(cfg: DetectorConfig, pixel_mean: float, pixel_std: float) -> Detector:
    if not pixel_std > 0:
        raise LimbscanError(f"detector: pixel_std must be > 0, got {pixel_std}")
    spec = get_spec(cfg.backbone)
    # torchvision's rule: pretrained weights get frozen batch norms and a frozen stem and early
    # stages; a random init keeps everything trainable, its batch norms too (frozen at their
    # init of mean 0, var 1 they normalise nothing, and a deep net's activations blow up).
    body = create_backbone(cfg.backbone, cfg.pretrained, features_only=True, frozen_bn=cfg.pretrained)
    if cfg.pretrained:
        freeze_stages(body, cfg.backbone, cfg.trainable_layers)
    backbone = FeaturePyramid(body, spec.feature_channels, cfg.fpn_channels)
    sizes = anchor_sizes(spec.feature_strides)
    names = [str(i) for i in range(len(spec.feature_channels))]
    model = Detector(
        backbone,
        num_classes=3,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        image_mean=[pixel_mean],
        image_std=[pixel_std],
        rpn_anchor_generator=AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes)),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img,
        # Keep every box: image scores rank images by their best abnormal box, and a floor
        # would tie all low-scoring images at 0, flattening the ROC curve there.
        box_score_thresh=0.0,
    )
    if not cfg.masks:
        # RoIHeads.has_mask() is False without these: boxes only, masks in targets ignored.
        model.roi_heads.mask_roi_pool = None
        model.roi_heads.mask_head = None
        model.roi_heads.mask_predictor = None
    return model


def detector_param_groups(model: MaskRCNN, lr_backbone: float, lr_heads: float, weight_decay: float) -> list[dict]:
    """The paper's groups: backbone, FPN and RPN at ``lr_backbone``; the RoI heads at ``lr_heads``."""
    return _param_groups(
        {
            "backbone": (model.backbone, lr_backbone),
            "rpn": (model.rpn, lr_backbone),
            "heads": (model.roi_heads, lr_heads),
        },
        weight_decay,
    )


def image_scores(outputs: list[dict]) -> Tensor:
    """Per image, its best ABNORMAL box score; 0 where it has none."""
    scores = []
    for out in outputs:
        abnormal = out["scores"][out["labels"] == ABNORMAL]
        scores.append(abnormal.max() if abnormal.numel() else out["scores"].new_zeros(()))
    return torch.stack(scores) if scores else torch.zeros(0)


def top_boxes(output: dict, k: int) -> Tensor:
    """The ``k`` best ABNORMAL boxes (xyxy), best first; none: the best box of any class; no boxes: ``[0, 4]``."""
    if k < 1:
        raise ValueError(f"top_boxes: k must be >= 1, got {k}")
    boxes, scores = output["boxes"], output["scores"]
    abnormal = output["labels"] == ABNORMAL
    if abnormal.any():
        boxes, scores = boxes[abnormal], scores[abnormal]
        return boxes[scores.argsort(descending=True)[:k]]
    if scores.numel():
        return boxes[scores.argmax()].unsqueeze(0)
    return boxes.new_zeros((0, 4))
