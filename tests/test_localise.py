"""Where to look: a likely or suspected image shows the bundle localiser's boxes, saying whose."""

from __future__ import annotations

import json

import numpy as np
import pytest

from limbscan.data.dataset import Dataset
from limbscan.errors import LimbscanError


@pytest.fixture(scope="module")
def paths(tiny_run):
    root, _ = tiny_run
    ds = Dataset.load(root)
    return [ds.image_path(im) for im in ds.images[:4]]


def _with_localiser(bundle, name, tmp_path):
    """A copy of ``bundle`` whose manifest names another localiser (bundle.json is not hashed)."""
    import shutil

    dst = tmp_path / "copy.limbscan"
    shutil.copytree(bundle, dst)
    manifest = json.loads((dst / "bundle.json").read_text())
    manifest["localiser"] = None if name is None else {"name": name, "why": "test"}
    (dst / "bundle.json").write_text(json.dumps(manifest))
    return dst


def test_export_names_the_best_measured_localiser_the_run_has(tiny_bundle, tiny_run, tmp_path):
    from limbscan.bundle import export_bundle, read_manifest
    from limbscan.localise import available, choose

    entry = read_manifest(tiny_bundle)["localiser"]
    assert entry["name"] == "detector" and "detector" in entry["why"]
    assert available(["whole-image"]) == ["gradcam"] and choose(["whole-image"])["name"] == "gradcam"
    assert choose(["fused"]) is None
    with pytest.raises(LimbscanError, match="needs a scenario this run lacks"):
        choose(["whole-image"], "detector")
    with pytest.raises(LimbscanError, match="use one of auto, detector, cascade, gradcam"):
        choose(["whole-image"], "cam")
    out = export_bundle(tiny_run[1], tmp_path / "g.limbscan", gate=None, localiser="gradcam")
    assert read_manifest(out)["localiser"] == {"name": "gradcam", "why": "chosen at export (--localiser)"}


def test_whole_image_likely_and_suspected_images_get_the_detectors_boxes(tiny_bundle, paths, with_operating_points):
    from limbscan.inference import load

    everything_likely = load(with_operating_points(tiny_bundle, 0.0, 0.0))
    whole = everything_likely.predict(paths, scenario="whole-image")
    detector = everything_likely.predict(paths, scenario="detector")
    for w, d in zip(whole, detector, strict=True):
        assert w.level == "likely" and w.boxes_from == "detector" and w.scenario == "whole-image"
        assert set(w.scores) == {"whole-image"}  # the localiser's run adds no score
        np.testing.assert_allclose([x.box for x in w.detections], [x.box for x in d.detections], atol=1e-3)
        assert all(x.mask is not None and x.mask.shape == (w.height, w.width) for x in w.detections)
        assert w.to_json()["boxes_from"] == "detector"
    nothing_likely = load(with_operating_points(tiny_bundle, 1.5, 1.5))
    for p in nothing_likely.predict(paths, scenario="whole-image"):
        assert p.level == "normal" and p.detections == [] and p.boxes_from is None


def test_detector_and_cascade_say_their_own_boxes(tiny_bundle, paths):
    from limbscan.inference import load

    model = load(tiny_bundle)
    for scenario in ("detector", "cascade"):
        for p in model.predict(paths, scenario=scenario):
            assert p.detections and p.boxes_from == scenario


def test_gradcam_localiser_draws_one_box_inside_the_image(tiny_bundle, paths, with_operating_points, tmp_path):
    from limbscan.inference import load

    model = load(_with_localiser(with_operating_points(tiny_bundle, 0.0, 0.0), "gradcam", tmp_path))
    for p in model.predict(paths, scenario="whole-image"):
        assert p.boxes_from == "gradcam" and len(p.detections) == 1
        x0, y0, x1, y1 = p.detections[0].box
        assert 0 <= x0 < x1 <= p.width and 0 <= y0 < y1 <= p.height
        assert p.detections[0].score == pytest.approx(p.probability)


def test_no_localiser_no_boxes(tiny_bundle, paths, with_operating_points, tmp_path):
    from limbscan.inference import load

    model = load(_with_localiser(with_operating_points(tiny_bundle, 0.0, 0.0), None, tmp_path))
    assert all(p.detections == [] and p.boxes_from is None for p in model.predict(paths, scenario="whole-image"))


def test_overlay_caption_and_report_name_the_localiser(tiny_bundle, paths, with_operating_points):
    from limbscan.inference import load
    from limbscan.overlay import _caption

    [p] = load(with_operating_points(tiny_bundle, 0.0, 0.0)).predict(paths[:1], scenario="whole-image")
    assert _caption(p) == f"likely abnormal {p.probability:.2f} (whole-image; boxes: detector)"
