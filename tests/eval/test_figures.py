"""limbscan.eval.figures: files are real PNG/SVG, legends carry the AUC, gallery boxes are red."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image
from sklearn.metrics import roc_auc_score

from limbscan.eval.figures import (
    DPI,
    _calibration_figure,
    _confusion_figure,
    _gallery_figure,
    _roc_figure,
    plot_calibration,
    plot_confusion,
    plot_gallery,
    plot_roc,
)
from limbscan.eval.metrics import MetricsInputError


def scored(n: int = 120, seed: int = 0, skill: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    return y, 1 / (1 + np.exp(-(skill * y + rng.normal(0, 1, n) - 0.5)))


def curves() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    y, strong = scored(seed=1, skill=2.5)
    rng = np.random.default_rng(2)
    weak = np.clip(0.5 * strong + 0.5 * rng.random(y.size), 0, 1)
    return {"cascade": (y, strong), "detector": (y, weak)}


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def assert_valid_png_svg(paths: list[Path], stem: Path) -> None:
    assert paths == [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    with Image.open(paths[0]) as im:
        im.verify()
    with Image.open(paths[0]) as im:
        assert im.format == "PNG"
        assert round(im.info["dpi"][0]) == DPI
    root = ET.parse(paths[1]).getroot()
    assert root.tag.endswith("svg")


def assert_print_readable(fig) -> None:
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 9]
    assert not small, f"text below 9 pt: {small}"


def test_roc_legend_holds_each_auc_and_ci():
    c = curves()
    fig = _roc_figure(c, cis={"cascade": (0.81, 0.97)})
    texts = legend_texts(fig)
    for name, (y, s) in c.items():
        auc = roc_auc_score(y, s)
        assert any(t.startswith(name) and f"{auc:.3f}" in t for t in texts), texts
    cascade = next(t for t in texts if t.startswith("cascade"))
    assert "0.810" in cascade and "0.970" in cascade
    detector = next(t for t in texts if t.startswith("detector"))
    assert "CI" not in detector  # no CI given, none invented
    assert any("chance" in t for t in texts)
    ax = fig.axes[0]
    assert "specificity" in ax.get_xlabel().lower() and "sensitivity" in ax.get_ylabel().lower()
    assert_print_readable(fig)


def test_roc_with_one_class_says_undefined():
    y = np.zeros(20, dtype=int)
    fig = _roc_figure({"cascade": (y, np.linspace(0, 1, 20))})
    assert "cascade: AUC undefined (no abnormal images)" in legend_texts(fig)


def test_plots_write_png_and_svg(tmp_path):
    c = curves()
    paths = plot_roc(c, tmp_path / "roc", cis={"cascade": (0.8, 0.9)})
    assert_valid_png_svg(paths, tmp_path / "roc")
    y, s = c["cascade"]
    # svg.fonttype none keeps text as text, so the AUC is searchable in the SVG
    assert f"{roc_auc_score(y, s):.3f}" in paths[1].read_text()
    paths = plot_confusion({"cascade": {"tp": 3, "fn": 1, "fp": 2, "tn": 9}}, tmp_path / "sub" / "confusion")
    assert_valid_png_svg(paths, tmp_path / "sub" / "confusion")
    assert_valid_png_svg(plot_calibration(c, tmp_path / "cal", n_bins=5), tmp_path / "cal")


def test_confusion_panels_show_counts_and_row_share():
    fig = _confusion_figure({"a": {"tp": 30, "fn": 10, "fp": 5, "tn": 15}, "b": {"tp": 0, "fn": 0, "fp": 1, "tn": 3}})
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2
    cells = {t.get_text() for ax in fig.axes for t in ax.texts}
    # rows are the truth: 30 of 40 abnormal found (75 %), 5 of 20 normal called abnormal (25 %)
    assert {"30\n75.0 %", "10\n25.0 %", "5\n25.0 %", "15\n75.0 %"} <= cells
    assert "0\n–" in cells  # no abnormal images: no share, not 0 %
    assert_print_readable(fig)
    with pytest.raises(MetricsInputError, match="tp"):
        _confusion_figure({"a": {"fn": 1, "fp": 1, "tn": 1}})


def test_calibration_matches_sklearn_and_rejects_non_probabilities():
    from sklearn.calibration import calibration_curve

    c = curves()
    fig = _calibration_figure(c, n_bins=5)
    y, s = c["cascade"]
    observed, predicted = calibration_curve(y, s, n_bins=5)
    line = next(ln for ln in fig.axes[0].get_lines() if ln.get_label() == "cascade")
    np.testing.assert_allclose(line.get_xdata(), predicted)
    np.testing.assert_allclose(line.get_ydata(), observed)
    assert fig.axes[1].get_xlabel() and fig.axes[0].get_ylabel()
    assert_print_readable(fig)
    with pytest.raises(MetricsInputError, match=r"\[0, 1\]"):
        _calibration_figure({"logits": (y, s * 10 - 5)})


def gallery_items() -> list[dict]:
    rng = np.random.default_rng(0)
    img = lambda: 0.2 + 0.2 * rng.random((120, 90))  # noqa: E731 - grey only, so any red comes from a box
    return [
        {"image": img(), "pred_boxes": [], "true_boxes": [[20, 30, 70, 90]], "title": "FN 0.08"},
        {"image": img(), "pred_boxes": [[10, 20, 60, 80]], "true_boxes": [[15, 25, 65, 85]], "title": "TP 0.93"},
        {"image": img(), "pred_boxes": [[20, 20, 70, 100]], "true_boxes": [], "title": "FP 0.71"},
        {"image": img(), "pred_boxes": [[30, 40, 80, 110]], "true_boxes": [], "title": "TP 0.88"},
    ]


def test_gallery_rows_are_tp_fp_fn():
    fig = _gallery_figure(gallery_items(), columns=4)
    row_labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert row_labels == ["TP", "FP", "FN"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["TP 0.93", "TP 0.88", "FP 0.71", "FN 0.08"]
    assert_print_readable(fig)


def test_gallery_draws_predicted_box_red(tmp_path):
    items = gallery_items()
    fig = _gallery_figure(items, columns=4)
    png = tmp_path / "g.png"
    fig.savefig(png, dpi=fig.dpi)  # data -> pixel transforms below are those of this render
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    height = rgb.shape[0]
    fp_ax = next(ax for ax in fig.axes if ax.get_title() == "FP 0.71")
    x0, y0, x1, y1 = items[2]["pred_boxes"][0]

    def pixel(x: float, y: float) -> tuple[int, int]:
        px, py = fp_ax.transData.transform((x, y))
        return int(round(height - py)), int(round(px))

    def is_red(patch: np.ndarray) -> bool:
        r, g, b = patch[..., 0], patch[..., 1], patch[..., 2]
        return bool(((r > 180) & (g < 80) & (b < 80)).any())

    for x, y in [(x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1)]:
        row, col = pixel(x, y)
        assert is_red(rgb[row - 1 : row + 2, col - 1 : col + 2]), (x, y)
    row, col = pixel((x0 + x1) / 2, (y0 + y1) / 2)
    assert not is_red(rgb[row - 3 : row + 4, col - 3 : col + 4])  # the box is an outline, not a fill

    paths = plot_gallery(items, tmp_path / "gallery")
    assert_valid_png_svg(paths, tmp_path / "gallery")


def test_gallery_shrinks_large_images_but_keeps_box_coordinates():
    big = np.full((2000, 1000), 0.3)
    fig = _gallery_figure([{"image": big, "pred_boxes": [[100, 200, 900, 1800]], "title": "TP 0.9"}])
    ax = fig.axes[0]
    shown = ax.get_images()[0].get_array()
    assert max(shown.shape) <= 480
    assert ax.get_images()[0].get_extent() == [0, 1000, 2000, 0]
    with pytest.raises(MetricsInputError, match="2-D"):
        _gallery_figure([{"image": np.zeros((4, 4, 3)), "title": "TP"}])
    with pytest.raises(MetricsInputError, match="no items"):
        _gallery_figure([])


def test_bad_curves_are_clear_errors():
    with pytest.raises(MetricsInputError, match="cascade: 3 labels but 2 scores"):
        _roc_figure({"cascade": ([0, 1, 1], [0.1, 0.2])})
    with pytest.raises(MetricsInputError, match="NaN"):
        _roc_figure({"cascade": ([0, 1], [0.1, float("nan")])})
