"""Bundles: what export writes, what loading checks, and that evaluation reads a bundle like a run."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

from limbscan.bundle import BUNDLE_FORMAT, MANIFEST, default_from_validation, export_bundle, read_manifest
from limbscan.errors import BadInputError, LimbscanError
from limbscan.eval.metrics import binary_metrics, choose_threshold
from limbscan.operating_points import choose_operating_points


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    _, run = tiny_run
    return export_bundle(run, tmp_path_factory.mktemp("bundle") / "tiny.limbscan", gate=None)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_holds_thresholds_provenance_and_checksums(bundle, tiny_run):
    from limbscan import __version__

    root, run = tiny_run
    m = read_manifest(bundle)
    assert m["format"] == BUNDLE_FORMAT and m["limbscan_version"] == __version__
    assert m["scenarios"] == ["whole-image", "detector", "cascade", "fused"]
    val = json.loads((run / "val_scores.json").read_text())
    # the default: the best held-out AUC on validation, and why (see tests/scenarios/test_fused.py)
    assert (m["default_scenario"], m["default_reason"]) == default_from_validation(val, m["scenarios"])
    assert m["default_reason"].startswith(f"{m['default_scenario']}: ")
    assert m["threshold_rule"] == "youden"
    for name in m["scenarios"]:
        assert m["thresholds"][name] == choose_threshold(val["labels"], val["scores"][name])
    assert m["data_hash"] == _sha256(root / "dataset.json")
    train_parts = {im.get("body_part") or "unknown" for im in json.loads((root / "dataset.json").read_text())["images"]
                   if im.get("split") == "train"}
    assert set(m["body_parts"]) == train_parts
    (main,) = m["training_data"]  # no auxiliary data: the main train split alone, recorded at training
    assert (main["role"], main["path"], main["dataset_sha256"], main["now"]) == (
        "main", str(root.resolve()), m["data_hash"], "unchanged")
    assert set(main["body_parts"]) == train_parts
    pre = m["preprocessing"]
    assert (pre["cache_side"], pre["whole_image_size"], pre["crop_size"], pre["top_k"]) == (160, 64, 48, 2)
    assert pre["crop_margin"] == pytest.approx(0.15) and 0 < pre["pixel_std"]
    listed = set(m["files"])
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {MANIFEST}
    assert listed == on_disk and {"config.yaml", "val_scores.json", "cascade/best.pt"} <= listed
    assert all(_sha256(bundle / rel) == digest for rel, digest in m["files"].items())
    # nothing left beside the bundle from the atomic write
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]


def test_export_carries_the_shipped_input_gate_unless_told_otherwise(bundle, tiny_run, tmp_path):
    from limbscan.gate.model import GATE_FILE, PixelGate, builtin_gate_path
    from limbscan.inference import load

    assert read_manifest(bundle)["gate"] is None and not (bundle / GATE_FILE).exists()  # exported with gate=None
    gated = export_bundle(tiny_run[1], tmp_path / "gated.limbscan")
    m = read_manifest(gated)
    shipped = PixelGate.load(builtin_gate_path()).meta
    assert m["gate"]["source"] == "builtin" and m["files"][GATE_FILE] == _sha256(builtin_gate_path())
    assert m["gate"]["region_threshold"] == shipped["region_threshold"]
    assert load(gated).gate is not None and load(bundle).gate is None
    (tmp_path / "broken.npz").write_bytes(b"not a gate")
    with pytest.raises(LimbscanError, match="not a limbscan input gate"):
        export_bundle(tiny_run[1], tmp_path / "x.limbscan", gate=tmp_path / "broken.npz")
    with pytest.raises(LimbscanError, match="no input gate there"):
        export_bundle(tiny_run[1], tmp_path / "y.limbscan", gate=tmp_path / "missing.npz")


def test_manifest_holds_both_operating_points_chosen_on_validation(bundle, tiny_run):
    _, run = tiny_run
    m = read_manifest(bundle)
    val = json.loads((run / "val_scores.json").read_text())
    labels = np.asarray(val["labels"])
    assert m["suspected_sensitivity"] == 0.95 and set(m["operating_points"]) == set(m["scenarios"])
    for name in m["scenarios"]:
        scores = np.asarray(val["scores"][name])
        likely, suspected = m["operating_points"][name]["likely"], m["operating_points"][name]["suspected"]
        assert likely["threshold"] == m["thresholds"][name] and likely["rule"] == "youden"
        assert suspected["rule"] == "sensitivity>=0.95" and suspected["threshold"] <= likely["threshold"]
        for point in (likely, suspected):  # what the manifest says of validation is what validation gives
            at = binary_metrics(labels, scores, point["threshold"])
            assert (point["val_sensitivity"], point["val_specificity"]) == (at.sensitivity, at.specificity)
        # the target is met on validation, or the note says why the point is degenerate there
        assert binary_metrics(labels, scores, suspected["threshold"]).sensitivity >= 0.95
        if suspected["threshold"] <= scores.min():
            assert "only at the lowest validation score" in suspected["note"]
        assert m["operating_points"][name] == json.loads(json.dumps(choose_operating_points(labels, scores)))


def test_suspected_sensitivity_is_configurable_and_checked(tiny_run, tmp_path):
    _, run = tiny_run
    out = export_bundle(run, tmp_path / "half.limbscan", suspected_sensitivity=0.5)
    m = read_manifest(out)
    val = json.loads((run / "val_scores.json").read_text())
    assert m["suspected_sensitivity"] == 0.5
    for name in m["scenarios"]:
        suspected = m["operating_points"][name]["suspected"]
        assert suspected["rule"] == "sensitivity>=0.5"
        want = min(choose_threshold(val["labels"], val["scores"][name], target_sensitivity=0.5), m["thresholds"][name])
        assert suspected["threshold"] == want
    with pytest.raises(LimbscanError, match=r"suspected_sensitivity must be a sensitivity in \(0, 1\]"):
        export_bundle(run, tmp_path / "bad.limbscan", suspected_sensitivity=1.2)
    assert not (tmp_path / "bad.limbscan").exists()


def test_operating_points_out_of_order_or_disagreeing_are_refused(bundle, with_operating_points):
    likely = read_manifest(bundle)["thresholds"]["cascade"]
    with pytest.raises(BadInputError, match="suspected threshold .* lies above its likely one"):
        read_manifest(with_operating_points(bundle, likely, likely + 0.1))
    edited = with_operating_points(bundle, None, 0.0)
    m = json.loads((edited / MANIFEST).read_text())
    m["thresholds"]["cascade"] += 0.01
    (edited / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BadInputError, match="likely threshold .* differs from its entry in thresholds"):
        read_manifest(edited)


def test_a_bundle_without_operating_points_still_loads_and_predicts(bundle, tiny_run, with_operating_points):
    from limbscan.data.dataset import Dataset
    from limbscan.inference import load

    old = with_operating_points(bundle, None, None)  # the manifest of a bundle exported before them
    m = read_manifest(old)
    assert "operating_points" not in m and m["thresholds"] == read_manifest(bundle)["thresholds"]
    model = load(old)
    assert model.thresholds() == (m["thresholds"][m["default_scenario"]], None) and model.suspected_threshold() is None
    root, _ = tiny_run
    ds = Dataset.load(root)
    preds = model.predict([ds.image_path(im) for im in ds.split_images("test")], masks=False)
    for p in preds:
        assert p.suspected_threshold is None and p.to_json()["suspected_threshold"] is None
        assert p.level == ("likely" if p.probability >= p.threshold else "normal")


def test_checkpoints_keep_weights_only_and_still_load(bundle, tiny_run):
    import torch

    from limbscan.models.loading import load_classifier, load_detector

    _, run = tiny_run
    for name in ("whole-image", "detector", "cascade"):
        ckpt = torch.load(bundle / name / "best.pt", weights_only=True)
        assert not {"optimizer", "scheduler", "scaler", "rng", "history"} & set(ckpt), name
        assert (bundle / name / "best.pt").stat().st_size < (run / name / "best.pt").stat().st_size
    model, extra = load_classifier(bundle / "cascade" / "best.pt")
    assert extra["top_k"] == 2 and not model.training
    load_detector(bundle / "detector" / "best.pt")


def test_target_sensitivity_sets_the_rule(tiny_run, tmp_path):
    _, run = tiny_run
    out = export_bundle(run, tmp_path / "sens.limbscan", target_sensitivity=1.0)
    m = read_manifest(out)
    val = json.loads((run / "val_scores.json").read_text())
    assert m["threshold_rule"] == "sensitivity>=1" and m["target_sensitivity"] == 1.0
    for name in m["scenarios"]:
        expected = choose_threshold(val["labels"], val["scores"][name], target_sensitivity=1.0)
        assert m["thresholds"][name] == expected
        labels, scores = np.asarray(val["labels"]), np.asarray(val["scores"][name])
        assert (scores[labels == 1] >= m["thresholds"][name]).all()  # every abnormal val image called


def test_existing_output_needs_overwrite_and_is_replaced_whole(tiny_run, tmp_path):
    _, run = tiny_run
    out = export_bundle(run, tmp_path / "b.limbscan")
    first = read_manifest(out)["created"]
    with pytest.raises(LimbscanError, match="already exists"):
        export_bundle(run, out)
    assert read_manifest(out)["created"] == first  # untouched
    export_bundle(run, out, overwrite=True)
    read_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.limbscan"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(LimbscanError, match="not a limbscan bundle"):
        export_bundle(run, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_run_without_validation_scores_is_refused(tiny_run, tmp_path):
    _, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "val_scores.json").unlink()
    with pytest.raises(LimbscanError, match="val_scores.json: not found"):
        export_bundle(copy, tmp_path / "x.limbscan")
    assert not (tmp_path / "x.limbscan").exists()


def test_loading_checks_format_files_and_version(bundle, tmp_path, caplog):
    with pytest.raises(LimbscanError, match="not a limbscan bundle"):
        read_manifest(tmp_path)

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(bundle, dst)
        return dst, json.loads((dst / MANIFEST).read_text())

    newer, m = copy("newer")
    m["format"] = BUNDLE_FORMAT + 1
    (newer / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(LimbscanError, match="upgrade limbscan"):
        read_manifest(newer)

    edited, _ = copy("edited")
    with open(edited / "cascade" / "best.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BadInputError, match="sha256 differs") as err:
        read_manifest(edited)
    assert err.value.path.endswith("cascade/best.pt")

    missing, _ = copy("missing")
    (missing / "config.yaml").unlink()
    with pytest.raises(BadInputError, match="missing from the bundle") as err:
        read_manifest(missing)
    assert err.value.path.endswith("config.yaml")

    older, m = copy("older")
    m["limbscan_version"] = "0.0.1"
    (older / MANIFEST).write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING, logger="limbscan.bundle"):
        assert read_manifest(older)["limbscan_version"] == "0.0.1"
    assert any("0.0.1" in r.getMessage() for r in caplog.records)


def test_evaluate_uses_the_bundles_thresholds(bundle, tiny_run, tmp_path):
    from limbscan.eval.evaluate import evaluate

    root, _ = tiny_run
    # A bundle whose stored thresholds differ from what the validation scores would give:
    # evaluation must report at the stored ones, as predict and serve apply them.
    moved = tmp_path / "moved.limbscan"
    shutil.copytree(bundle, moved)
    m = json.loads((moved / MANIFEST).read_text())
    m["thresholds"] = {name: 0.5 + 0.01 * i for i, name in enumerate(m["scenarios"])}
    for i, name in enumerate(m["scenarios"]):
        m["operating_points"][name]["likely"]["threshold"] = m["thresholds"][name]
        m["operating_points"][name]["suspected"]["threshold"] = 0.2 + 0.01 * i
    (moved / MANIFEST).write_text(json.dumps(m))
    metrics = evaluate(moved, root, "test", tmp_path / "report", n_boot=20, gallery=False, progress=False)
    assert {n: s["threshold"] for n, s in metrics["scenarios"].items()} == m["thresholds"]
    assert metrics["threshold_method"] == "youden" and (tmp_path / "report" / "metrics.json").is_file()
    assert metrics["suspected_sensitivity"] == 0.95
    # Each point's sensitivity and specificity are the reported split's, at the stored threshold.
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    rows = (tmp_path / "report" / "scores.csv").read_text().splitlines()
    header, rows = rows[0].split(","), [r.split(",") for r in rows[1:]]
    labels = np.array([int(r[1]) for r in rows])
    for name, s in saved["scenarios"].items():
        scores = np.array([float(r[header.index(name)]) for r in rows])
        for level in ("likely", "suspected"):
            point = s["operating_points"][level]
            assert point["threshold"] == m["operating_points"][name][level]["threshold"]
            at = binary_metrics(labels, scores, point["threshold"])
            assert (point["sensitivity"], point["specificity"]) == (at.sensitivity, at.specificity)
            assert point["confusion"] == {"tp": at.tp, "fn": at.fn, "fp": at.fp, "tn": at.tn}
        assert s["operating_points"]["likely"]["sensitivity"] == s["sensitivity"]  # the balanced point's keys stay
    with pytest.raises(LimbscanError, match="export the run again"):
        evaluate(moved, root, "test", None, target_sensitivity=0.9, n_boot=20, gallery=False, progress=False)
    with pytest.raises(LimbscanError, match="--suspected-sensitivity 0.9"):
        evaluate(moved, root, "test", None, suspected_sensitivity=0.9, n_boot=20, gallery=False, progress=False)


def test_evaluate_reports_only_the_likely_point_of_a_bundle_without_operating_points(
        bundle, tiny_run, tmp_path, with_operating_points):
    from limbscan.eval.evaluate import evaluate

    root, _ = tiny_run
    old = with_operating_points(bundle, None, None)
    metrics = evaluate(old, root, "test", tmp_path / "report", n_boot=20, gallery=False, progress=False)
    assert metrics["suspected_sensitivity"] is None
    for s in metrics["scenarios"].values():
        assert s["operating_points"]["suspected"] is None
        assert s["operating_points"]["likely"]["threshold"] == s["threshold"]
    assert "No suspected point for whole-image, detector, cascade" in (tmp_path / "report" / "report.md").read_text()


def test_cli_export_prints_scenarios_and_thresholds(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from limbscan.cli import app

    _, run = tiny_run
    out = tmp_path / "cli.limbscan"
    result = CliRunner().invoke(app, ["export", str(run), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    for name in m["scenarios"]:
        assert name in result.output and f"{m['thresholds'][name]:.4f}" in result.output
        assert f"{m['operating_points'][name]['suspected']['threshold']:.4f}" in result.output
    half = CliRunner().invoke(app, ["export", str(run), "-o", str(tmp_path / "half.limbscan"), "-q",
                                    "--suspected-sensitivity", "0.5"])
    assert half.exit_code == 0, half.output
    assert read_manifest(tmp_path / "half.limbscan")["suspected_sensitivity"] == 0.5
    again = CliRunner().invoke(app, ["export", str(run), "-o", str(out), "-q"])
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_onnx_export_agrees_with_torch(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import limbscan.bundle as bundle_module
    from limbscan.data.dataset import Dataset
    from limbscan.inference import load

    root, run = tiny_run
    out = export_bundle(run, tmp_path / "onnx.limbscan", onnx=True, gate=None)
    m = read_manifest(out)
    assert {"whole-image", "cascade"} <= set(m["onnx"]) and set(m["onnx_notes"]) >= set(m["onnx"])
    if "detector" not in m["onnx"]:
        assert m["onnx_notes"]["detector"].startswith("not exported")
    assert all(rel in m["files"] for rel in m["onnx"].values())

    ds = Dataset.load(root)
    paths = [ds.image_path(im) for im in ds.split_images("test")]
    torch_preds = load(out).predict(paths, scenario="all", masks=False)
    onnx_preds = load(out, runtime="onnx").predict(paths, scenario="all", masks=False)
    for a, b in zip(torch_preds, onnx_preds, strict=True):
        for name in m["scenarios"]:
            assert a.scores[name] == pytest.approx(b.scores[name], abs=1e-4)

    # An export whose ONNX outputs disagree fails, and leaves nothing behind.
    monkeypatch.setattr(bundle_module, "ONNX_TOLERANCE", -1.0)
    with pytest.raises(LimbscanError, match="differ from PyTorch"):
        export_bundle(run, tmp_path / "bad.limbscan", onnx=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx.limbscan"]


def test_cli_evaluate_prints_both_operating_points(bundle, tiny_run, tmp_path):
    from typer.testing import CliRunner

    from limbscan.cli import app

    root, _ = tiny_run
    result = CliRunner().invoke(app, ["evaluate", str(bundle), str(root), "-o", str(tmp_path / "report"),
                                      "--n-boot", "20", "-q"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines at the terminal's width
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for name, s in metrics["scenarios"].items():
        low = s["operating_points"]["suspected"]
        assert f"{name}, suspected point: sensitivity" in said and f"at threshold {low['threshold']:.3f}" in said


def _cv_folder(path, scenarios_auc, sha, k=3):
    """A finished `limbscan cv` folder as export reads it: cv.json with each scenario's fold mean."""
    path.mkdir(parents=True)
    summary = {"k": k, "dataset_sha256": sha,
               "scenarios": {n: {"auc_mean": a, "auc_sd": 0.01, "fold_auc": [a] * k} for n, a in scenarios_auc.items()}}
    (path / "cv.json").write_text(json.dumps(summary))
    return path


def test_default_from_cv_picks_the_best_fold_mean_and_says_so(bundle, tiny_run, tmp_path):
    _, run = tiny_run
    m = read_manifest(bundle)
    val = json.loads((run / "val_scores.json").read_text())
    sha = next(d["dataset_sha256"] for d in val["training_data"] if d["role"] == "main")
    # the CV favours a scenario other than the one validation chose
    pick = next(n for n in m["scenarios"] if n != m["default_scenario"])
    aucs = {n: (0.91 if n == pick else 0.80) for n in m["scenarios"]}
    cv = _cv_folder(tmp_path / "cv", aucs, sha)
    out = export_bundle(run, tmp_path / "cv.limbscan", default_from_cv_dir=cv)
    got = read_manifest(out)
    assert got["default_scenario"] == pick
    assert got["default_reason"].startswith(f"{pick}: best cross-validated AUC (mean across the folds of 3-fold CV "
                                            f"in cv), 0.910 vs ")
    assert got["default_cv"]["auc_mean"] == aucs and got["default_cv"]["k"] == 3
    assert got["thresholds"] == m["thresholds"]  # the operating points stay the validation split's

    # refused: a scenario the CV did not score, another dataset, no summary yet
    partial = _cv_folder(tmp_path / "partial", {n: 0.9 for n in m["scenarios"] if n != "fused"}, sha)
    with pytest.raises(LimbscanError, match="did not score fused.*--scenario whole-image,detector,cascade,fused"):
        export_bundle(run, tmp_path / "b1.limbscan", default_from_cv_dir=partial)
    other = _cv_folder(tmp_path / "other", aucs, "0" * 64)
    with pytest.raises(LimbscanError, match="another dataset.json"):
        export_bundle(run, tmp_path / "b2.limbscan", default_from_cv_dir=other)
    with pytest.raises(LimbscanError, match="cv.json: not found"):
        export_bundle(run, tmp_path / "b3.limbscan", default_from_cv_dir=tmp_path / "nothing")
    assert not any((tmp_path / f"b{i}.limbscan").exists() for i in (1, 2, 3))
