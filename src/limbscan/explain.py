"""Where the classifier looked: Grad-CAM (pytorch_grad_cam) on the classifier of a prediction's scenario.

- ``whole-image``: Grad-CAM on the letterboxed image the classifier saw, with the letterbox
  undone and the map brought back to the original pixels.
- ``cascade``: Grad-CAM on the top crop (the first detection's box, cut by the same
  :func:`~limbscan.data.torchdata.crop_box` inference uses), pasted back into the crop's window;
  zero elsewhere, since the classifier saw nothing else.
- ``detector``: there is no classifier to explain; a :class:`LimbscanError` says so.

The target is the abnormal logit, whatever the label: the map shows the evidence for
"abnormal", which is what a reader checks on both a flagged and a cleared image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from limbscan.data.torchdata import _fit, crop_window, letterbox
from limbscan.errors import LimbscanError

if TYPE_CHECKING:
    from limbscan.inference import Model, Prediction

CLASSIFIER_SCENARIOS = ("whole-image", "cascade")
PROBE_SIDE = 224  # large enough that every registered backbone's last map is wider than 1 pixel


def target_layer(classifier: nn.Module, probe_side: int = PROBE_SIDE) -> nn.Module:
    """The module that produces the backbone's last spatial feature map (its last conv block).

    Found by running a probe image and keeping the last module to finish with a 4-D output
    wider than one pixel: after it comes global pooling. Backbones disagree on names (timm
    EfficientNet ``bn2``, timm MobileNetV3 ``blocks`` since its ``conv_head`` follows the pool,
    torchvision ResNet ``layer4``, DenseNet ``features``), so no name list is kept in sync.
    """
    finished: list[nn.Module] = []

    def record(module: nn.Module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
            finished.append(module)

    handles = [m.register_forward_hook(record) for m in classifier.modules() if m is not classifier]
    try:
        with torch.no_grad():
            classifier(torch.zeros(1, 1, probe_side, probe_side))
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise LimbscanError(f"Grad-CAM: {type(classifier).__name__} has no spatial feature map to explain")
    return finished[-1]


def _cam(classifier: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Grad-CAM of the abnormal logit for one [1, 1, S, S] input: float S x S in [0, 1]."""
    from pytorch_grad_cam import GradCAM  # only --gradcam needs it (and its opencv import)

    layer = target_layer(classifier, max(PROBE_SIDE, x.shape[-1]))
    with torch.inference_mode(False), torch.enable_grad(), GradCAM(model=classifier, target_layers=[layer]) as cam:
        # The input asks for gradients so the target layer's output carries them even where the
        # loaded weights were frozen (requires_grad off); cloned here, outside inference mode.
        x = x.detach().clone().requires_grad_(True)
        # The classifier returns one logit per image, so each target is that logit itself.
        grey = cam(input_tensor=x, targets=[lambda logit: logit])
    return np.asarray(grey[0], dtype=np.float32)


def _unletterbox(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """The part of a letterboxed square map that covers a height x width image (see letterbox)."""
    size = cam.shape[0]
    nh, nw = _fit(height, width, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    return cam[top : top + nh, left : left + nw]


def _resize(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    if cam.shape == (height, width):
        return cam
    return np.asarray(Image.fromarray(cam.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR))


def gradcam(model: Model, pixels: np.ndarray, prediction: Prediction) -> np.ndarray:
    """Grad-CAM for ``prediction`` (made by ``model`` on ``pixels``): float H x W in [0, 1], original pixels."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"expected a grey H x W image, got shape {pixels.shape}")
    scenario = prediction.scenario
    if scenario not in CLASSIFIER_SCENARIOS:
        have = [s for s in model.scenarios if s in CLASSIFIER_SCENARIOS]
        hint = f"; this bundle has {', '.join(have)}" if have else "; this bundle has none"
        raise LimbscanError(
            f"Grad-CAM needs a classifier: scenario {scenario!r} has none (whole-image or cascade do{hint})"
        )
    height, width = pixels.shape
    prep = model.manifest["preprocessing"]
    classifier = model.classifier(scenario)
    image = model.preprocess(pixels)  # 1 x h x w, as training saw it
    h, w = image.shape[-2:]
    if scenario == "whole-image":
        size = int(prep["whole_image_size"])
        cam = _cam(classifier, letterbox(image, size)[None])
        return np.clip(_resize(_unletterbox(cam, h, w), height, width), 0.0, 1.0)

    # cascade: the top crop, cut exactly as the cascade cut it (box scaled to the preprocessed image)
    box = prediction.detections[0].box if prediction.detections else [0.0, 0.0, float(width), float(height)]
    sx, sy = w / width, h / height
    x0, y0, x1, y1 = crop_window(
        [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], (h, w), float(prep["crop_margin"])
    )
    crop = letterbox(image[:, y0:y1, x0:x1], int(prep["crop_size"]))
    cam = _unletterbox(_cam(classifier, crop[None]), y1 - y0, x1 - x0)
    # Pasted at the preprocessed scale, then the whole map resized once: the window's edges
    # land where the crop's did, in the original pixels.
    full = np.zeros((h, w), dtype=np.float32)
    full[y0:y1, x0:x1] = _resize(cam, y1 - y0, x1 - x0)
    return np.clip(_resize(full, height, width), 0.0, 1.0)


__all__ = ["gradcam", "target_layer"]
