"""Export: what it writes into a bundle, the options that change it, and what it refuses."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from limbscan.bundle import BUNDLE_FORMAT, MANIFEST, default_from_validation, export_bundle, read_manifest
from limbscan.errors import LimbscanError
from limbscan.eval.metrics import binary_metrics, choose_threshold
from limbscan.operating_points import choose_operating_points


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


def test_half_keeps_scores_within_1e3_and_halves_the_weights(bundle, tiny_run, tmp_path):
    import torch

    from limbscan.data.dataset import Dataset
    from limbscan.inference import load

    _, run = tiny_run
    half = export_bundle(run, tmp_path / "half.limbscan", gate=None, half=True, scenarios=["whole-image", "detector"])
    m = read_manifest(half)
    assert m["weights_dtype"] == "float16" and m["scenarios"] == ["whole-image", "detector"]
    for name in m["scenarios"]:
        full_size, half_size = ((b / name / "best.pt").stat().st_size for b in (bundle, half))
        assert half_size < 0.7 * full_size, name
        state = torch.load(half / name / "best.pt", weights_only=True)["model"]
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16, torch.float32}
    ds = Dataset.load(tiny_run[0])
    paths = [ds.image_path(im) for im in ds.images[:6]]
    a = load(bundle).predict(paths, scenario="all", masks=False)
    b = load(half).predict(paths, scenario="all", masks=False)
    for x, y in zip(a, b, strict=True):
        for name in ("whole-image", "detector"):
            assert y.scores[name] == pytest.approx(x.scores[name], abs=1e-3)


def test_a_scenario_subset_brings_what_it_needs_and_a_model_card(tiny_run, tmp_path):
    _, run = tiny_run
    with pytest.raises(LimbscanError, match="cascade needs its detector.*add it to --scenario"):
        export_bundle(run, tmp_path / "a.limbscan", gate=None, scenarios=["whole-image", "cascade"])
    with pytest.raises(LimbscanError, match="nonsense not trained here"):
        export_bundle(run, tmp_path / "b.limbscan", gate=None, scenarios=["nonsense"])
    card = tmp_path / "card.md"
    card.write_text("# A model card\n")
    out = export_bundle(run, tmp_path / "c.limbscan", gate=None, scenarios=["whole-image"], model_card=card)
    m = read_manifest(out)  # the card is hashed like every file
    assert m["scenarios"] == ["whole-image"] and m["model_card"] == "model-card.md" and "model-card.md" in m["files"]
    assert m["localiser"]["name"] == "gradcam"  # no detector: the whole-image model's Grad-CAM box
