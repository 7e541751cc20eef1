"""Models: the backbone registry, the classifier and the Mask R-CNN detector.

Names load on first use: ``limbscan.models.labels`` is imported by every DataLoader worker,
which should not pay for timm and torchvision's detection models.
"""

from importlib import import_module

from limbscan.models.labels import ABNORMAL, NORMAL

_LAZY = {
    "BackboneSpec": "backbones",
    "create_backbone": "backbones",
    "get_spec": "backbones",
    "list_backbones": "backbones",
    "Classifier": "classifier",
    "build_classifier": "classifier",
    "Detections": "detector",
    "Detector": "detector",
    "build_detector": "detector",
    "describe_detections": "detector",
    "run_detector": "detector",
    "load_checkpoint": "loading",
    "load_classifier": "loading",
    "load_detector": "loading",
    "detector_param_groups": "detector",
    "image_scores": "detector",
    "top_boxes": "detector",
}

__all__ = ["ABNORMAL", "NORMAL", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"limbscan.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'limbscan.models' has no attribute {name!r}")
