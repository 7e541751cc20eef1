"""Bundles: what export writes, what loading checks, and that evaluation reads a bundle like a run."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

from limbscan.bundle import BUNDLE_FORMAT, MANIFEST, export_bundle, read_manifest
from limbscan.errors import BadInputError, LimbscanError
from limbscan.eval.metrics import choose_threshold


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    _, run = tiny_run
    return export_bundle(run, tmp_path_factory.mktemp("bundle") / "tiny.limbscan")


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_holds_thresholds_provenance_and_checksums(bundle, tiny_run):
    from limbscan import __version__

    root, run = tiny_run
    m = read_manifest(bundle)
    assert m["format"] == BUNDLE_FORMAT and m["limbscan_version"] == __version__
    assert m["scenarios"] == ["whole-image", "detector", "cascade"] and m["default_scenario"] == "cascade"
    val = json.loads((run / "val_scores.json").read_text())
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
    (moved / MANIFEST).write_text(json.dumps(m))
    metrics = evaluate(moved, root, "test", tmp_path / "report", n_boot=20, gallery=False, progress=False)
    assert {n: s["threshold"] for n, s in metrics["scenarios"].items()} == m["thresholds"]
    assert metrics["threshold_method"] == "youden" and (tmp_path / "report" / "metrics.json").is_file()
    with pytest.raises(LimbscanError, match="export the run again"):
        evaluate(moved, root, "test", None, target_sensitivity=0.9, n_boot=20, gallery=False, progress=False)


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
    again = CliRunner().invoke(app, ["export", str(run), "-o", str(out), "-q"])
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_onnx_export_agrees_with_torch(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import limbscan.bundle as bundle_module
    from limbscan.data.dataset import Dataset
    from limbscan.inference import load

    root, run = tiny_run
    out = export_bundle(run, tmp_path / "onnx.limbscan", onnx=True)
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
