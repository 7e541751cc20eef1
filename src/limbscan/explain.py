"""Where the classifier looked: Grad-CAM (pytorch_grad_cam) on the classifier of a prediction's scenario.

``whole-image``: on the letterboxed input, mapped back to the original pixels. ``cascade``: on the
top crop (:func:`~limbscan.data.geometry.crop_box`), pasted into the crop's window, zero elsewhere.
``detector``: no classifier, a :class:`LimbscanError`. The target is always the abnormal logit:
the map shows the evidence for "abnormal", on a flagged and on a cleared image alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from limbscan.data.geometry import fit
from limbscan.errors import LimbscanError

if TYPE_CHECKING:
    from limbscan.inference import Prediction, Predictor

PROBE_SIDE = 224  # large enough that every registered backbone's last map is wider than 1 pixel
# A heatmap's box: the region around its peak where it stays at or above this share of the peak.
CAM_BOX_FRACTION = 0.5


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
    nh, nw = fit(height, width, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    return cam[top : top + nh, left : left + nw]


def _resize(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    if cam.shape == (height, width):
        return cam
    return np.asarray(Image.fromarray(cam.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR))


def gradcam(model: Predictor, pixels: np.ndarray, prediction: Prediction) -> np.ndarray:
    """Grad-CAM for ``prediction`` (made by ``model`` on ``pixels``): float H x W in [0, 1], original pixels."""
    from limbscan.scenarios import classifier_scenarios
    from limbscan.scenarios.base import Finding, ImageInput

    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"expected a grey H x W image, got shape {pixels.shape}")
    name = prediction.scenario
    if name not in classifier_scenarios():
        have = [s for s in model.scenarios if s in classifier_scenarios()]
        hint = f"; this bundle has {', '.join(have)}" if have else "; this bundle has none"
        raise LimbscanError(
            f"Grad-CAM needs a classifier: scenario {name!r} has none "
            f"({' or '.join(classifier_scenarios())} do{hint})"
        )
    height, width = pixels.shape
    scenario = model.scenario(name)
    image = ImageInput(model.preprocess(pixels), width, height)  # 1 x h x w, as training saw it
    h, w = image.pixels.shape[-2:]
    # The scenario's own input: the letterboxed image, or the top crop cut exactly as it was cut.
    finding = Finding(prediction.probability, [d.box for d in prediction.detections])
    x, (x0, y0, x1, y1) = scenario.explain_input(image, finding)
    cam = _cam(model.classifier(name), x[None])
    if scenario.input_resize == "letterbox":  # a squashed input's map covers the window whole
        cam = _unletterbox(cam, y1 - y0, x1 - x0)
    # Pasted at the preprocessed scale, then the whole map resized once: the window's edges
    # land where the classifier's input did, in the original pixels; zero where it saw nothing.
    full = np.zeros((h, w), dtype=np.float32)
    full[y0:y1, x0:x1] = _resize(cam, y1 - y0, x1 - x0)
    return np.clip(_resize(full, height, width), 0.0, 1.0)


def cam_box(heat: np.ndarray, fraction: float = CAM_BOX_FRACTION) -> list[float] | None:
    """``[x0, y0, x1, y1]`` around a heatmap's peak: the extent of the connected region that holds the
    peak and stays at or above ``fraction`` of it (the pointing game's box); None for a flat zero map."""
    from scipy import ndimage

    heat = np.asarray(heat, dtype=np.float32)
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0:
        return None
    regions, _ = ndimage.label(heat >= fraction * peak)
    ys, xs = np.nonzero(regions == regions[np.unravel_index(int(np.argmax(heat)), heat.shape)])
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


__all__ = ["CAM_BOX_FRACTION", "cam_box", "gradcam", "target_layer"]
