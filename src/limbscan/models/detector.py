"""Mask R-CNN (torchvision) on a feature pyramid over any registry backbone.

Classes: 0 background, ``NORMAL`` (the paper boxes a normal image whole), ``ABNORMAL`` (the
lesion). The model takes a list of ``[1, H, W]`` grey tensors in [0, 1]; torchvision's
transform resizes them to ``min_size``/``max_size`` and normalises with the training set's
mean pixel and std (one channel), so those travel in the checkpoint with the weights.

The pyramid: the backbone's stride 8-32 maps (4-32 for the paper's ResNets and DenseNet) go
through torchvision's ``FeaturePyramidNetwork`` plus a max-pooled extra level, as torchvision's
own ``*_fpn`` detectors do. With pretrained weights the stem and all but ``trainable_layers``
stages are frozen, and every batch norm is frozen (detection batches of 2 make batch
statistics noise); a random init trains everything, as torchvision's builders do.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

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

__all__ = ["ABNORMAL", "NORMAL", "build_detector", "detector_param_groups", "image_scores", "top_boxes"]

ASPECT_RATIOS = (0.5, 1.0, 2.0)


class FeaturePyramid(nn.Module):
    """A backbone's list of maps -> FPN maps ``{"0", "1", ..., "pool"}``, what torchvision's heads read."""

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

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def anchor_sizes(strides: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Two anchor sides per level, 4 and 8 times its stride, for each map and the pooled one.

    torchvision's ResNet-FPN uses one (8 x stride); the lower one is added because fractures
    are small (FracAtlas lesions are often 20-60 px at detector size) and the RPN regresses
    better from an anchor near the box's size.
    """
    levels = (*strides, 2 * strides[-1])
    return tuple((4 * s, 8 * s) for s in levels)


def build_detector(cfg: DetectorConfig, pixel_mean: float, pixel_std: float) -> MaskRCNN:
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
    model = MaskRCNN(
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
