from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from limbscan.data.geometry import crop_window, letterbox
from limbscan.errors import LimbscanError
from limbscan.explain import _unletterbox, gradcam, target_layer
from limbscan.io import read_image
from limbscan.models.backbones import get_spec, list_backbones
from limbscan.models.classifier import Classifier


@pytest.fixture(scope="module")
def model(tiny_run, tmp_path_factory):
    from limbscan.bundle import export_bundle
    from limbscan.inference import load

    return load(export_bundle(tiny_run[1], tmp_path_factory.mktemp("explain") / "m.limbscan", gate=None))


@pytest.fixture(scope="module")
def image(tiny_run) -> np.ndarray:
    # A wide abnormal phantom would do as well; any image exercises the geometry.
    path = sorted((tiny_run[0] / "images").glob("*.png"))[0]
    return read_image(path)[0]


@pytest.mark.parametrize("name", list_backbones())
def test_target_layer_is_the_last_stride_32_map_of_every_backbone(name):
    classifier = Classifier(name, pretrained=False).eval()
    layer = target_layer(classifier)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        classifier(torch.zeros(1, 1, 224, 224))
    handle.remove()
    assert seen and seen[-1][-2:] == (7, 7)  # stride 32: the last block, not an earlier stage
    assert seen[-1][1] in (get_spec(name).feature_channels[-1], get_spec(name).num_features)
    assert any(layer is m for m in classifier.backbone.modules())  # never the head


def test_unletterbox_undoes_letterbox():
    ramp = torch.arange(1, 1 + 30 * 80, dtype=torch.float32).reshape(1, 30, 80)
    square = letterbox(ramp, 64)[0].numpy()
    back = _unletterbox(square, 30, 80)
    assert back.shape == (24, 64)  # 30 x 80 fitted into 64: 24 x 64
    assert (back > 0).all()  # none of the zero padding
    assert square.sum() == pytest.approx(back.sum())  # all of the image


@pytest.mark.parametrize("scenario", ["whole-image", "cascade"])
def test_gradcam_is_a_map_over_the_original_pixels(model, image, scenario):
    pred = model.predict([image], scenario=scenario)[0]
    heat = gradcam(model, image, pred)
    assert heat.shape == image.shape and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert heat.max() - heat.min() > 0.1  # not a constant map
    if scenario == "cascade":
        # Only the top crop's window was seen: zero outside it (a pixel of slack for the resize).
        h, w = model.preprocess(image).shape[-2:]
        sx, sy = w / image.shape[1], h / image.shape[0]
        x0, y0, x1, y1 = pred.detections[0].box
        cx0, cy0, cx1, cy1 = crop_window([x0 * sx, y0 * sy, x1 * sx, y1 * sy], (h, w),
                                         float(model.manifest["preprocessing"]["crop_margin"]))
        outside = np.ones(image.shape, bool)
        outside[max(0, int(cy0 / sy) - 2) : int(np.ceil(cy1 / sy)) + 2, max(0, int(cx0 / sx) - 2) : int(np.ceil(cx1 / sx)) + 2] = False
        assert heat[outside].max(initial=0.0) == 0.0


def test_gradcam_refuses_a_detector_prediction(model, image):
    pred = model.predict([image], scenario="detector")[0]
    with pytest.raises(LimbscanError, match="Grad-CAM needs a classifier"):
        gradcam(model, image, pred)


def test_gradcam_refuses_a_detector_only_bundle(tiny_run, tmp_path, image):
    from limbscan.bundle import export_bundle
    from limbscan.inference import load

    run = tmp_path / "run"
    shutil.copytree(tiny_run[1], run)
    for name in ("whole-image", "cascade", "fused"):
        shutil.rmtree(run / name)
    model = load(export_bundle(run, tmp_path / "det.limbscan", gate=None))
    pred = model.predict([image])[0]
    with pytest.raises(LimbscanError, match="Grad-CAM needs a classifier.*has none"):
        gradcam(model, image, pred)


def test_cam_box_is_the_region_around_the_peak():
    from limbscan.explain import cam_box

    heat = np.zeros((40, 60), np.float32)
    heat[10:20, 5:15] = 0.6  # a weaker blob elsewhere, above half the peak but not connected to it
    heat[25:35, 30:50] = 0.8
    heat[28, 40] = 1.0
    assert cam_box(heat) == [30.0, 25.0, 50.0, 35.0]
    assert cam_box(heat, fraction=0.9) == [40.0, 28.0, 41.0, 29.0]
    assert cam_box(np.zeros((5, 5))) is None


def test_evaluate_measures_the_whole_image_models_gradcam_box(tiny_run, tmp_path):
    from limbscan.bundle import export_bundle
    from limbscan.eval.evaluate import measure
    from limbscan.eval.report import metrics_markdown

    root, run = tiny_run
    bundle = export_bundle(run, tmp_path / "m.limbscan", gate=None)
    metrics = measure(bundle, root, "test", n_boot=20, gallery=False, progress=False).metrics
    loc = metrics["scenarios"]["whole-image"]["localisation_gradcam"]
    assert loc["n_images_with_lesions"] > 0 and 0 <= loc["top_box_hit_rate"] <= 1 and 0 <= loc["ap50"] <= 1
    assert "whole-image (Grad-CAM box)" in metrics_markdown(metrics)
    # A run folder has no predictor to explain with: no Grad-CAM entry, the rest as before.
    assert "localisation_gradcam" not in measure(run, root, "test", n_boot=20, gallery=False,
                                                 progress=False).metrics["scenarios"]["whole-image"]
