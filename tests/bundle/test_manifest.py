"""Reading a bundle's manifest: format, file hashes, version, and the operating points checked."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from limbscan.bundle import BUNDLE_FORMAT, MANIFEST, read_manifest
from limbscan.errors import BadInputError, LimbscanError


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
