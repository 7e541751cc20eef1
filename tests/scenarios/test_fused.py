"""The fused scenario: weights fitted on validation, out-of-fold where it is judged, one formula
where it scores, chosen as the default only on its cross-validated AUC.

The tiny run's validation split (3 images) is too small to cross-validate, so its fused stage
fits nothing (checked below). The fit itself is checked on :func:`fused_run`: the tiny run's base
checkpoints as they are, the fused stage fitted on a copy of its dataset whose val split also
holds the test images (8 images, 4 of each class; no base model trained on any of them).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from limbscan.bundle import default_from_validation, export_bundle, read_manifest
from limbscan.config import load_config
from limbscan.data.dataset import Dataset
from limbscan.errors import LimbscanError
from limbscan.models.loading import load_checkpoint
from limbscan.rundir import RunDir
from limbscan.scenarios import names
from limbscan.scenarios.fused import EQUAL, INPUTS, LOGISTIC, RANK
from limbscan.train.stages.fused import out_of_fold

TOLERANCE = 1e-5
BASES = ("whole-image", "detector", "cascade")


def _logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _plain_logistic():
    """The logistic rule spelled with scikit-learn alone, as a check on the stage's own fit."""
    return make_pipeline(FunctionTransformer(_logit), LogisticRegression(C=1.0, max_iter=1000))


@pytest.fixture(scope="module")
def fused_run(tiny_run, tmp_path_factory, tiny_config_factory):
    from limbscan.train.runner import train

    root, run = tiny_run
    tmp = tmp_path_factory.mktemp("fused")
    ds = Dataset.load(root)
    coco = json.loads((root / "dataset.json").read_text())
    for im in coco["images"]:
        im["file_name"] = str(ds.image_path(im).resolve())
        im["split"] = "val" if im["split"] == "test" else im["split"]
    (tmp / "ds").mkdir()
    (tmp / "ds" / "dataset.json").write_text(json.dumps(coco))
    out = tmp / "run"
    for name in BASES:
        shutil.copytree(RunDir(run).stage(name), RunDir(out).stage(name))
    cfg = tiny_config_factory()
    cfg.train.scenario = "fused"
    results = train(tmp / "ds", cfg, out, progress=False)
    return tmp / "ds", out, results


@pytest.fixture(scope="module")
def fused_bundle(fused_run, tmp_path_factory):
    _, out, _ = fused_run
    return export_bundle(out, tmp_path_factory.mktemp("fused_bundle") / "m.limbscan", gate=None)


def _val(out):
    """val_scores.json, the base scores the fusion was fitted on (as its checkpoint keeps them,
    unrounded: the tiny run's whole-image scores differ in the fifth decimal only, where
    val_scores.json's rounding starts), the labels."""
    val = json.loads(RunDir(out).val_scores.read_text())
    fitted_on = load_checkpoint(RunDir(out).best("fused"))["extra"]["val_base_scores"]
    scores = np.column_stack([fitted_on[n] for n in INPUTS])
    np.testing.assert_allclose(scores, np.column_stack([val["scores"][n] for n in INPUTS]), atol=1e-6, rtol=0)
    return val, scores, np.asarray(val["labels"])


def test_the_fused_stage_fits_once_without_gradients_and_records_both_rules(fused_run):
    root, out, results = fused_run
    run = RunDir(out)
    val, _, labels = _val(out)
    assert len(labels) == 8 and labels.sum() == 4  # what the fixture promises: a split to cross-validate
    assert run.trained() == list(names()) and INPUTS == BASES
    ckpt = load_checkpoint(run.best("fused"))
    extra = ckpt["extra"]
    assert ckpt["optimizer"] == {} and (ckpt["epoch"], ckpt["best_epoch"]) == (1, 1)
    assert extra["rule"] == LOGISTIC and extra["folds_used"] == 4 and "only 4 images" in extra["note"]
    assert set(extra["cv_auc"]) == {LOGISTIC, RANK}
    for cv in extra["cv_auc"].values():
        assert cv["repeats"] == 10 and len(cv["aucs"]) == 10 and cv["folds"] == 4
        assert 0 <= cv["mean"] <= 1 and cv["sd"] >= 0
        assert cv["mean"] == pytest.approx(np.mean(cv["aucs"]), abs=1e-6)
    # the configured rule's first round is the out-of-fold score val_scores.json holds
    oof_auc = roc_auc_score(labels, val["scores"]["fused"])
    assert extra["cv_auc"][LOGISTIC]["aucs"][0] == pytest.approx(oof_auc, abs=1e-6)
    assert results["fused"].best_auc == pytest.approx(oof_auc, abs=1e-6) == extra["out_of_fold_auc"]
    (line,) = [r for r in map(json.loads, run.metrics.read_text().splitlines()) if r["stage"] == "fused"]
    assert line["cv_auc_logistic"] == extra["cv_auc"][LOGISTIC]["mean"]
    assert line["cv_auc_rank_sd"] == extra["cv_auc"][RANK]["sd"]
    assert "cross-validated AUC of each fusion rule" in run.report.read_text()


def test_validation_scores_are_out_of_fold_not_in_sample(fused_run):
    _, out, _ = fused_run
    val, scores, labels = _val(out)
    fused = np.asarray(val["scores"]["fused"])
    # recomputed with scikit-learn alone: stratified 4-fold (a class has 4 images), seeded by train.seed
    cv = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    recomputed = cross_val_predict(_plain_logistic(), scores, labels, cv=cv, method="predict_proba")[:, 1]
    np.testing.assert_allclose(fused, recomputed, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(fused, out_of_fold(scores, labels, LOGISTIC, 1.0, 4, 0), atol=TOLERANCE, rtol=0)
    in_sample = _plain_logistic().fit(scores, labels).predict_proba(scores)[:, 1]
    assert np.abs(fused - in_sample).max() > 10 * TOLERANCE  # an in-sample fit would have given other numbers


def test_predict_scores_sigmoid_of_the_stored_weights_on_the_base_logits(fused_run, fused_bundle):
    import limbscan

    root, out, _ = fused_run
    val, scores, labels = _val(out)
    ds = Dataset.load(root)
    images = {int(im["id"]): im for im in ds.images}
    files = [str(ds.image_path(images[i])) for i in val["image_ids"]]
    fusion = read_manifest(fused_bundle)["fusion"]
    state = load_checkpoint(RunDir(fused_bundle).best("fused"))["model"]
    assert fusion["coef"] == state["coef"].tolist() and fusion["intercept"] == float(state["intercept"])
    assert fusion["rule"] == LOGISTIC and set(fusion["cv_auc"]) == {LOGISTIC, RANK}
    w, b = np.asarray(fusion["coef"]), fusion["intercept"]
    predictor = limbscan.load(fused_bundle)
    fused = predictor.predict(files, scenario="fused")
    cascade = predictor.predict(files, scenario="cascade")
    got = np.asarray([p.probability for p in fused])
    base = np.asarray([[p.scores[n] for n in INPUTS] for p in fused])
    assert sorted(fused[0].scores) == sorted(names())  # the three base scores come with it
    np.testing.assert_allclose(got, expit(b + _logit(base) @ w), atol=TOLERANCE, rtol=0)
    # the base scores are the base scenarios' own, and the weights the refit on every validation image
    np.testing.assert_allclose(base, scores, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(got, _plain_logistic().fit(scores, labels).predict_proba(scores)[:, 1], atol=1e-4)
    assert np.abs(got - np.asarray(val["scores"]["fused"])).max() > 10 * TOLERANCE  # in-sample here, out-of-fold there
    for f, c in zip(fused, cascade, strict=True):  # the cascade's boxes and masks, for the overlay
        assert [d.box for d in f.detections] == [d.box for d in c.detections]
        assert all((d.mask is None) == (e.mask is None) for d, e in zip(f.detections, c.detections, strict=True))
        assert f.scenario == "fused" and f.label == ("abnormal" if f.probability >= f.threshold else "normal")


def test_the_default_is_the_best_cross_validated_auc_and_the_reason_names_it(fused_run, fused_bundle):
    _, out, _ = fused_run
    m = read_manifest(fused_bundle)
    val = json.loads(RunDir(out).val_scores.read_text())
    aucs = {n: roc_auc_score(val["labels"], val["scores"][n]) for n in m["scenarios"]}
    best = max(aucs.values())
    assert aucs[m["default_scenario"]] == best
    assert (m["default_scenario"], m["default_reason"]) == default_from_validation(val, m["scenarios"])
    assert m["default_reason"].startswith(f"{m['default_scenario']}: best validation AUC (fused: out-of-fold; the others: their best epoch's), "
                                          f"{best:.3f} vs ")
    for name in m["scenarios"]:
        assert f"{aucs[name]:.3f}" in m["default_reason"]


def test_predict_says_which_scenario_and_why(fused_bundle, fused_run, tmp_path):
    from typer.testing import CliRunner

    from limbscan.cli import app
    from limbscan.predict import SUMMARY, run_predict

    root, _, _ = fused_run
    m = read_manifest(fused_bundle)
    ds = Dataset.load(root)
    image = str(ds.image_path(ds.images[0]))
    summary = run_predict(fused_bundle, [image], tmp_path / "a", overlays=False, progress=False)
    assert (summary.scenario, summary.scenario_reason) == (m["default_scenario"], m["default_reason"])
    assert json.loads((tmp_path / "a" / SUMMARY).read_text())["scenario_reason"] == m["default_reason"]
    summary = run_predict(fused_bundle, [image], tmp_path / "b", scenario="fused", overlays=False, progress=False)
    assert summary.scenario_reason == f"fused: asked for (the bundle's default is {m['default_scenario']})"
    result = CliRunner().invoke(app, ["predict", str(fused_bundle), image, "-o", str(tmp_path / "c"), "-q",
                                      "--no-overlays"])
    assert result.exit_code == 0, result.output
    assert f"scenario {m['default_reason']}" in " ".join(result.output.split())


def test_a_run_without_fused_exports_and_predicts_as_before(tiny_run, tmp_path):
    """A run trained before the fused scenario: no fused folder, no fused validation scores."""
    import limbscan
    from limbscan.predict import run_predict

    root, run = tiny_run
    old = tmp_path / "old_run"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("fused"))
    val = json.loads(RunDir(old).val_scores.read_text())
    del val["scores"]["fused"]
    RunDir(old).val_scores.write_text(json.dumps(val))
    bundle = export_bundle(old, tmp_path / "old.limbscan", gate=None)
    m = read_manifest(bundle)
    assert m["scenarios"] == list(BASES) and "fusion" not in m and m["default_scenario"] in BASES
    new = read_manifest(export_bundle(run, tmp_path / "new.limbscan", gate=None))
    assert {n: m["thresholds"][n] for n in BASES} == {n: new["thresholds"][n] for n in BASES}
    ds = Dataset.load(root)
    files = [str(ds.image_path(im)) for im in ds.split_images("test")]
    before = limbscan.load(tmp_path / "new.limbscan").predict(files, scenario="all", masks=False)
    after = limbscan.load(bundle).predict(files, scenario="all", masks=False)
    for a, b in zip(after, before, strict=True):
        assert set(a.scores) == set(BASES)
        assert a.scores == pytest.approx({n: b.scores[n] for n in BASES}, abs=TOLERANCE)
    # a bundle exported before default_reason existed: it loads, and predict says it used its default
    manifest = json.loads((bundle / "bundle.json").read_text())
    del manifest["default_reason"]
    (bundle / "bundle.json").write_text(json.dumps(manifest))  # bundle.json hashes the other files only
    model = limbscan.load(bundle)
    assert model.default_reason is None
    summary = run_predict(model, files[:1], tmp_path / "p", overlays=False, progress=False)
    assert summary.scenario_reason == f"{m['default_scenario']}: the bundle's default"


def test_the_tiny_run_is_too_small_to_cross_validate_so_nothing_is_fitted(tiny_run):
    _, run = tiny_run
    extra = load_checkpoint(RunDir(run).best("fused"))["extra"]
    val = json.loads(RunDir(run).val_scores.read_text())
    assert extra["rule"] == EQUAL and extra["folds_used"] == 0 and extra["cv_auc"] == {}
    assert "too few to cross-validate" in extra["note"]
    scores = np.column_stack([val["scores"][n] for n in INPUTS])
    np.testing.assert_allclose(val["scores"]["fused"], expit(_logit(scores).mean(axis=1)), atol=TOLERANCE)


def test_a_resumed_run_keeps_the_fit_and_refits_when_its_inputs_change(fused_run, tmp_path, tiny_config_factory):
    from limbscan.train.runner import train

    root, out, _ = fused_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(out, run.root)
    cfg = tiny_config_factory()
    cfg.train.scenario = "fused"
    written = run.last("fused").stat().st_mtime_ns
    train(root, cfg, run.root, resume=True, progress=False)
    assert run.last("fused").stat().st_mtime_ns == written  # nothing changed: not refitted
    cfg.fusion.rule = RANK
    train(root, cfg, run.root, resume=True, progress=False)
    extra = load_checkpoint(run.best("fused"))["extra"]
    assert extra["rule"] == RANK and extra["fusion"]["rule"] == RANK
    val, scores, labels = _val(run.root)
    assert val["scores"]["fused"] == pytest.approx(list(out_of_fold(scores, labels, RANK, 1.0, 4, 0)), abs=TOLERANCE)


def test_the_reports_calibration_plot_shows_the_fused_probability(tiny_run):
    from limbscan.eval.evaluate import measure
    from limbscan.eval.figures import _calibration_figure

    root, run = tiny_run
    evaluation = measure(run, root, "test", n_boot=10, gallery=False, progress=False)
    assert "fused" in evaluation.metrics["scenarios"] and "fused" in evaluation.curves
    legend = _calibration_figure(evaluation.curves).axes[0].get_legend()
    assert any(text.get_text().startswith("fused") for text in legend.get_texts())


def test_config_checks_the_fusion_settings():
    assert load_config().fusion.rule == LOGISTIC  # the defaults work with no YAML key
    assert load_config(None, ["fusion.rule=rank", "fusion.C=0.5"]).fusion.C == 0.5
    with pytest.raises(LimbscanError, match="config: fusion.rule 'mean' is not one of logistic, rank"):
        load_config(None, ["fusion.rule=mean"])
    with pytest.raises(LimbscanError, match="fusion.folds 1 must be >= 2"):
        load_config(None, ["fusion.folds=1"])
    with pytest.raises(LimbscanError, match="fusion.C 0.0 must be > 0"):
        load_config(None, ["fusion.C=0.0"])
