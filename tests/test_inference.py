"""Model.predict on files gives what evaluation gives on the same images, with boxes, masks and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from limbscan.data.dataset import Dataset
from limbscan.errors import BadInputError, LimbscanError


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    from limbscan.bundle import export_bundle

    _, run = tiny_run
    return export_bundle(run, tmp_path_factory.mktemp("bundle") / "tiny.limbscan", gate=None)


@pytest.fixture(scope="module")
def model(bundle):
    from limbscan.inference import load

    return load(bundle)


@pytest.fixture(scope="module")
def sample(tiny_run):
    """Ten images, both labels, PNG and DICOM, several sizes."""
    root, _ = tiny_run
    ds = Dataset.load(root)
    images = ds.images[:10]
    assert {int(im["label"]) for im in images} == {0, 1}
    assert {ds.image_path(im).suffix for im in images} == {".png", ".dcm"}
    return ds, images


@pytest.fixture(scope="module")
def predicted(model, sample):
    ds, images = sample
    return model.predict([ds.image_path(im) for im in images], scenario="all", batch_size=3)


def test_import_limbscan_does_not_import_torch():
    import limbscan
    import limbscan.inference

    code = "import sys, limbscan; assert 'torch' not in sys.modules and 'load' in limbscan.__all__"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert limbscan.load is limbscan.inference.load  # loaded on first use


def test_preprocess_is_what_training_saw(model, sample):
    from limbscan.data.cache import load_cached
    from limbscan.io import read_image

    ds, images = sample
    for image in images[:4]:
        pixels, _ = read_image(ds.image_path(image))
        x = model.preprocess(pixels)
        assert x.shape[0] == 1 and max(x.shape[1:]) == 160
        assert np.array_equal(x[0].numpy(), load_cached(ds, image, 160))


def _score_each(bundle, ds, images, scenarios=None):
    """score_run image by image: torchvision pads a detector batch to its largest image, which
    moves the scores of the smaller ones; predict batches only images of one size."""
    from limbscan.scenarios.scoring import score_run

    return [score_run(bundle, ds, [image], scenarios) for image in images]


def test_predict_gives_score_runs_scores_and_boxes(model, bundle, sample, predicted):
    ds, images = sample
    each = _score_each(bundle, ds, images)
    for name in ("whole-image", "detector", "cascade"):
        got = np.array([p.scores[name] for p in predicted])
        np.testing.assert_allclose(got, [s[name].scores[0] for s in each], atol=1e-4, err_msg=name)
    for image, p, scored in zip(images, predicted, each, strict=True):
        assert p.scenario == "cascade" and p.threshold == model.threshold() == model.threshold("cascade")
        assert p.probability == p.scores["cascade"]
        assert p.label == ("abnormal" if p.probability >= p.threshold else "normal")
        assert (p.width, p.height) == (image["width"], image["height"])
        crops = scored["cascade"].boxes[image["id"]]
        assert [d.score for d in p.detections] == pytest.approx(crops["scores"], abs=1e-4)
        np.testing.assert_allclose([d.box for d in p.detections], crops["boxes"], atol=1e-3)


def test_boxes_lie_inside_the_image_and_masks_have_its_shape(predicted):
    n_masks = 0
    for p in predicted:
        assert p.detections, "the cascade always crops something"
        assert [d.score for d in p.detections] == sorted((d.score for d in p.detections), reverse=True)
        for d in p.detections:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= p.width and 0 <= y0 < y1 <= p.height
            if d.mask is not None:
                n_masks += 1
                assert d.mask.dtype == bool and d.mask.shape == (p.height, p.width)
    assert n_masks > 0


def test_detector_scenario_lists_its_best_boxes_with_masks(model, bundle, sample):
    from limbscan.inference import MAX_DETECTIONS

    ds, images = sample
    preds = model.predict([ds.image_path(im) for im in images[:4]], scenario="detector")
    each = _score_each(bundle, ds, images[:4], ["detector"])
    for image, p, scored in zip(images[:4], preds, each, strict=True):
        assert set(p.scores) == {"detector"} and p.scenario == "detector"
        want = scored["detector"].boxes[image["id"]]
        assert 0 < len(p.detections) <= MAX_DETECTIONS
        np.testing.assert_allclose([d.box for d in p.detections], want["boxes"][: len(p.detections)], atol=1e-3)
        assert [d.score for d in p.detections] == pytest.approx(want["scores"][: len(p.detections)], abs=1e-4)
        for d in p.detections:
            assert d.mask is not None and d.mask.shape == (p.height, p.width)
            ys, xs = np.nonzero(d.mask)
            if len(xs):  # a pasted mask stays (about) inside its box
                assert xs.min() >= d.box[0] - 2 and xs.max() <= d.box[2] + 2


def test_one_scenario_runs_only_what_it_needs(model, sample, predicted):
    ds, images = sample
    paths = [ds.image_path(im) for im in images[:3]]
    whole = model.predict(paths, scenario="whole-image")
    assert all(set(p.scores) == {"whole-image"} for p in whole)
    # Its boxes are the bundle localiser's, on likely and suspected images only (tests/test_localise.py).
    assert all(p.boxes_from == "detector" if p.detections else p.boxes_from is None for p in whole)
    assert all(p.detections == [] for p in whole if p.level == "normal")
    assert [p.probability for p in whole] == pytest.approx([p.scores["whole-image"] for p in predicted[:3]], abs=1e-6)
    cascade = model.predict(paths, masks=False)  # the default scenario, the detector's score comes free
    assert all(set(p.scores) == {"detector", "cascade"} for p in cascade)
    assert all(d.mask is None for p in cascade for d in p.detections)
    assert [p.probability for p in cascade] == pytest.approx([p.probability for p in predicted[:3]], abs=1e-6)
    with pytest.raises(LimbscanError, match="not in this bundle"):
        model.predict(paths, scenario="nonsense")


def test_level_is_the_probability_against_the_bundles_two_thresholds(model, predicted):
    likely, suspected = model.thresholds()
    assert (likely, suspected) == (model.manifest["thresholds"]["cascade"],
                                   model.manifest["operating_points"]["cascade"]["suspected"]["threshold"])
    assert suspected <= likely
    for p in predicted:
        assert (p.threshold, p.suspected_threshold) == (likely, suspected)
        want = "likely" if p.probability >= likely else "suspected" if p.probability >= suspected else "normal"
        assert p.level == want and (p.label == "abnormal") == (want == "likely")


def test_all_three_levels_from_thresholds_between_the_probabilities(bundle, sample, predicted, with_operating_points):
    from limbscan.inference import load

    ds, images = sample
    probabilities = sorted(p.probability for p in predicted)
    # thresholds halfway between neighbouring probabilities: every level gets at least one image
    likely = (probabilities[-3] + probabilities[-4]) / 2
    suspected = (probabilities[2] + probabilities[3]) / 2
    assert probabilities[2] < suspected < likely < probabilities[-3]
    model = load(with_operating_points(bundle, likely, suspected))
    preds = model.predict([ds.image_path(im) for im in images], scenario="all", batch_size=3, masks=False)
    levels = [p.level for p in preds]
    assert sorted(set(levels)) == ["likely", "normal", "suspected"]
    for p in preds:
        want = "likely" if p.probability >= likely else "suspected" if p.probability >= suspected else "normal"
        assert p.level == want and p.label == ("abnormal" if want == "likely" else "normal")
        record = json.loads(json.dumps(p.to_json()))
        assert (record["level"], record["threshold"], record["suspected_threshold"]) == (want, likely, suspected)


def test_to_json_is_plain_json_and_masks_decode(predicted):
    from pycocotools import mask as mask_utils

    for p in predicted:
        record = json.loads(json.dumps(p.to_json()))
        assert record["probability"] == p.probability and record["label"] == p.label
        assert record["scores"] == p.scores and (record["width"], record["height"]) == (p.width, p.height)
        for d, rec in zip(p.detections, record["detections"], strict=True):
            assert rec["box"] == d.box
            if d.mask is None:
                assert rec["mask"] is None
                continue
            assert rec["mask"]["size"] == [p.height, p.width]
            decoded = mask_utils.decode({"size": rec["mask"]["size"], "counts": rec["mask"]["counts"].encode()})
            assert np.array_equal(decoded.astype(bool), d.mask)


def test_iter_predict_names_bad_files_and_scores_the_rest(model, sample, predicted, tmp_path):
    ds, images = sample
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    good = [ds.image_path(im) for im in images[:3]]
    inputs = [good[0], corrupt, good[1], text, good[2]]
    results = list(model.iter_predict(inputs, scenario="all", batch_size=2))
    assert [name for name, _ in results] == [str(p) for p in inputs]
    errors = [r for _, r in results if isinstance(r, BadInputError)]
    assert [e.path for e in errors] == [str(corrupt), str(text)]
    scored = [r for _, r in results if not isinstance(r, BadInputError)]
    assert [r.file for r in scored] == [str(p) for p in good]
    assert [r.scores for r in scored] == [pytest.approx(p.scores, abs=1e-6) for p in predicted[:3]]
    with pytest.raises(BadInputError) as err:
        model.predict(inputs)
    assert err.value.path == str(corrupt)


def test_arrays_score_like_their_files(model, sample, predicted):
    from limbscan.io import read_image

    ds, images = sample
    pixels, meta = read_image(ds.image_path(images[1]))
    (p,) = model.predict([pixels], scenario="all")
    assert p.file is None and p.body_part is None and (p.width, p.height) == (meta.width, meta.height)
    assert p.scores == pytest.approx(predicted[1].scores, abs=1e-6)
    eight_bit = np.rint(pixels * 255).astype(np.uint8)
    (q,) = model.predict([eight_bit], scenario="whole-image")
    assert 0.0 <= q.probability <= 1.0
    with pytest.raises(BadInputError, match="grey H x W"):
        model.predict([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(BadInputError, match=r"\[0, 1\]"):
        model.predict([pixels * 255])


def test_dicom_body_part_reaches_the_prediction(sample, predicted):
    ds, images = sample
    for image, p in zip(images, predicted, strict=True):
        if ds.image_path(image).suffix == ".dcm":
            assert p.body_part == image["body_part"]
