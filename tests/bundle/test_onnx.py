"""ONNX export: the models agree with PyTorch, and an export whose outputs disagree fails."""

from __future__ import annotations

import pytest

from limbscan.bundle import export_bundle, read_manifest
from limbscan.errors import LimbscanError


def test_onnx_export_agrees_with_torch(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import limbscan.bundle.onnx as bundle_onnx
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
    monkeypatch.setattr(bundle_onnx, "ONNX_TOLERANCE", -1.0)
    with pytest.raises(LimbscanError, match="differ from PyTorch"):
        export_bundle(run, tmp_path / "bad.limbscan", onnx=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx.limbscan"]
