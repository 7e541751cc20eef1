"""The model limbscan ships: intact, small, and scoring the examples as when it was exported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from limbscan.pretrained import SHIPPED, shipped_bundle

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MAX_BYTES = 40 * 1024 * 1024
# The stored scores were made on one CPU; another CPU's float summation order moves them a little.
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def model():
    from limbscan.inference import load

    return load()


def test_the_shipped_bundle_is_whole_small_and_says_what_it_is():
    from limbscan.bundle import read_manifest

    manifest = read_manifest(shipped_bundle())  # verifies every file's sha256
    assert sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file()) <= MAX_BYTES
    assert manifest["default_scenario"] == "whole-image" and set(manifest["scenarios"]) == {"whole-image", "detector"}
    assert manifest["gate"] and manifest["localiser"]["name"] == "detector"
    assert manifest["weights_dtype"] == "float16" and manifest["data_hash"]
    # The card it carries is docs/model-card.md as it is (`make model` re-exports after an edit).
    assert manifest["model_card"] == "model-card.md"
    assert (SHIPPED / "model-card.md").read_text() == (ROOT / "docs" / "model-card.md").read_text()


def test_it_scores_the_examples_as_stored(model):
    rows = list(csv.DictReader(open(EXAMPLES / "expected_scores.csv")))
    assert len(rows) == 21
    found = model.predict([EXAMPLES / r["file"] for r in rows], scenario="all", masks=False)
    for row, p in zip(rows, found, strict=True):
        assert p.in_scope, row["file"]
        for name in ("whole-image", "detector"):
            assert p.scores[name] == pytest.approx(float(row[name]), abs=TOLERANCE), (row["file"], name)


def test_limbscan_load_without_a_path_is_the_shipped_model(model):
    assert Path(model.path) == SHIPPED and model.default_scenario == "whole-image"


def test_predict_without_a_bundle_uses_it(tmp_path):
    from typer.testing import CliRunner

    from limbscan.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(EXAMPLES / "dicom"), str(EXAMPLES / "fracatlas" / "IMG0002458.jpg"),
                                      "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == 2
    rows = list(csv.DictReader(open(out / "worklist.csv")))
    assert {r["scenario"] for r in rows} == {"whole-image"}
    assert all(r["boxes_from"] == "detector" for r in rows if r["level"] in ("likely", "suspected"))


def test_a_missing_bundle_name_is_refused_not_scored(tmp_path):
    from typer.testing import CliRunner

    from limbscan.cli import app

    result = CliRunner().invoke(app, ["predict", str(tmp_path / "typo.limbscan"), str(EXAMPLES), "-o",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a bundle" in result.output
