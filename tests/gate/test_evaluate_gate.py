"""``evaluate`` scores every image and says how many the bundle's input gate would keep out."""

from __future__ import annotations

from limbscan.data.dataset import Dataset
from limbscan.eval.evaluate import measure
from limbscan.eval.report import metrics_markdown
from limbscan.gate.model import GATE_FILE, PixelGate, judge_files


def test_evaluate_counts_what_the_gate_keeps_out_and_still_scores_everything(gated_bundle, tiny_bundle, tiny_run):
    root, _ = tiny_run
    images = Dataset.load(root).split_images("test")
    result = measure(gated_bundle, root, "test", n_boot=20, gallery=False, progress=False)
    gate = result.metrics["gate"]
    verdicts = judge_files(PixelGate.load(gated_bundle / GATE_FILE), [Dataset.load(root).image_path(im) for im in images])
    refused = [im["id"] for im, v in zip(images, verdicts) if not v.in_scope]
    assert gate["n"] == len(images) and gate["n_out_of_scope"] == len(refused)
    assert gate["out_of_scope_images"] == refused
    # The phantoms' DICOM headers name a lower-limb part: only PNG phantoms can be refused, by pixels.
    assert gate["by"]["header"] == 0 and gate["by"]["pixels"] == len(refused)
    for labels, scores in result.curves.values():
        assert len(labels) == len(scores) == len(images)  # every image scored regardless
    assert "Input gate" in metrics_markdown(result.metrics)
    assert measure(tiny_bundle, root, "test", n_boot=20, gallery=False, progress=False).metrics["gate"] is None
