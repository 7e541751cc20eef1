"""One image, one number: training's validation scores, ``evaluate`` and ``limbscan.load().predict``
score each image of the tiny run alike, for every scenario, and the cascade's training proposals
are the boxes ``predict`` returns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from limbscan.data.dataset import Dataset
from limbscan.rundir import RunDir
from limbscan.scenarios import info, names

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def agreement(tiny_run, tmp_path_factory):
    import limbscan
    from limbscan.bundle import export_bundle
    from limbscan.eval.evaluate import SCORES_FILE, evaluate

    root, run = tiny_run
    tmp = tmp_path_factory.mktemp("agree")
    ds = Dataset.load(root)
    val = ds.split_images("val")
    bundle = export_bundle(run, tmp / "m.limbscan", gate=None)
    saved = json.loads(RunDir(run).val_scores.read_text())
    # `limbscan evaluate` refuses to report the split its thresholds came from, so it scores the
    # validation images as the "test" split of a copy of the dataset (same files, own cache).
    coco = json.loads((root / "dataset.json").read_text())
    for im in coco["images"]:
        im["file_name"] = str(ds.image_path(im).resolve())
        im["split"] = {"val": "test", "test": "other"}.get(im["split"], im["split"])
    (tmp / "copy").mkdir()
    (tmp / "copy" / "dataset.json").write_text(json.dumps(coco))
    evaluate(run, tmp / "copy", "test", tmp / "report", n_boot=10, progress=False)
    rows = (tmp / "report" / SCORES_FILE).read_text().splitlines()
    header = rows[0].split(",")
    evaluated = {name: {int(r.split(",")[0]): float(r.split(",")[header.index(name)]) for r in rows[1:]}
                 for name in header[2:]}
    predictor = limbscan.load(bundle)
    files = [str(ds.image_path(im)) for im in val]
    predicted = {name: predictor.predict(files, scenario=name) for name in names()}
    return ds, val, saved, evaluated, predicted, run


def test_the_run_holds_every_scenario(agreement):
    *_, run = agreement
    assert RunDir(run).trained() == list(names())


@pytest.mark.parametrize("scenario", names())
def test_validation_evaluation_and_prediction_give_one_score(agreement, scenario):
    ds, val, saved, evaluated, predicted, run = agreement
    assert saved["image_ids"] == [int(im["id"]) for im in val]
    from_training = np.asarray(saved["scores"][scenario])
    from_evaluate = np.asarray([evaluated[scenario][int(im["id"])] for im in val])  # scores.csv
    from_predict = np.asarray([p.probability for p in predicted[scenario]])
    assert len(from_training) == len(val) >= 3
    assert np.ptp(from_predict) > 0  # the scores differ between images: the comparison means something
    np.testing.assert_allclose(from_predict, from_evaluate, atol=TOLERANCE, rtol=0)
    if info(scenario).fitted_on_validation:
        # Fitted on these very images (fused): val_scores.json holds its out-of-fold scores, kept
        # by its stage (tests/scenarios/test_fused.py), not the in-sample ones predict gives here.
        from limbscan.scenarios import scenario_class
        from limbscan.scenarios.base import ModelStore

        held_out = scenario_class(scenario).held_out_scores(ModelStore(run), saved["image_ids"])
        np.testing.assert_allclose(from_training, held_out, atol=TOLERANCE, rtol=0)
    else:
        np.testing.assert_allclose(from_evaluate, from_training, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("scenario", names())
def test_the_validation_auc_that_chose_best_pt_is_the_one_of_its_scores(agreement, scenario):
    from limbscan.train.stages.base import auc_or_none

    ds, val, saved, _, _, run = agreement
    summary = json.loads(RunDir(run).summary.read_text())["scenarios"][scenario]
    recomputed = auc_or_none(saved["labels"], saved["scores"][scenario])
    if summary["best_val_auc"] is None:
        assert recomputed is None
    else:
        assert recomputed == pytest.approx(summary["best_val_auc"], abs=1e-6)


def test_the_cascades_training_proposals_are_the_boxes_predict_returns(agreement):
    ds, val, _, _, predicted, run = agreement
    proposals = json.loads(RunDir(run).stage_file("cascade", "proposals.json").read_text())
    compared = 0
    for image, prediction in zip(val, predicted["cascade"], strict=True):
        trained_on = sorted(proposals["val"][str(image["id"])])
        returned = sorted(d.box for d in prediction.detections)
        if not trained_on:  # no detector box: the cascade crops the image whole, in both
            trained_on = [[0.0, 0.0, float(image["width"]), float(image["height"])]]
        assert len(returned) == len(trained_on), image["id"]
        np.testing.assert_allclose(np.asarray(returned), np.asarray(trained_on), atol=0.02)
        compared += len(returned)
    assert compared >= len(val)
    # and the detector score the cascade's validation fused with is the detector scenario's
    det = {str(im["id"]): p.probability for im, p in zip(val, predicted["detector"], strict=True)}
    for image_id, score in proposals["val_scores"].items():
        assert score == pytest.approx(det[image_id], abs=TOLERANCE)
