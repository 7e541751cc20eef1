"""Dataset counts: the dict scripts read and the table people read."""

from __future__ import annotations

import json
from collections import Counter

from rich.console import Console

from limbscan.config import SplitConfig
from limbscan.data.dataset import SPLITS, Dataset
from limbscan.data.split import split_dataset
from limbscan.data.stats import render_stats, stats_table


def make_dataset(tmp_path, synthetic=False) -> Dataset:
    images, annotations = [], []
    layout = [("leg", 0, 40), ("leg", 1, 12), ("hip", 0, 9), ("hip", 1, 4), (None, 0, 2)]
    for part, label, n in layout:
        for _ in range(n):
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 10, "height": 10,
                           "body_part": part, "label": label, "patient_id": f"p{image_id // 2}",
                           "split": None, "attributes": {}, "truncated": image_id == 3})
            for _ in range(label * (1 + image_id % 2)):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [1, 1, 2, 2], "segmentation": [], "area": 4, "iscrowd": 0})
    info = {"source": "test", "synthetic": synthetic}
    return Dataset(tmp_path, {"info": info, "images": images, "annotations": annotations, "categories": []})


def test_counts_add_up(tmp_path):
    ds = split_dataset(make_dataset(tmp_path), SplitConfig(seed=0))
    stats = json.loads(json.dumps(stats_table(ds)))  # JSON-friendly all the way down
    assert stats["n_images"] == 67 and stats["n_abnormal"] == 16 and stats["n_normal"] == 51
    assert stats["n_annotations"] == len(ds.coco["annotations"])
    assert stats["n_patients"] == len({im["patient_id"] for im in ds.images})
    assert stats["n_truncated"] == 1 and stats["synthetic"] is False
    assert set(stats["by_body_part"]) == {"leg", "hip", "unknown"}

    expected = ds.counts()  # the schema's own (part, label, split) counter
    for part, labels in stats["by_body_part"].items():
        for name, cells in labels.items():
            label = {"normal": 0, "abnormal": 1}[name]
            for split in SPLITS:
                assert cells[split] == expected.get((part, label, split), 0)
            assert cells["unsplit"] == 0
            assert cells["total"] == sum(cells[s] for s in SPLITS)

    by_split = stats["by_split"]
    per_split = Counter(im["split"] for im in ds.images)
    for split in SPLITS:
        assert by_split[split]["n_images"] == per_split[split]
        assert by_split[split]["n_normal"] + by_split[split]["n_abnormal"] == per_split[split]
    assert sum(by_split[s]["n_annotations"] for s in SPLITS) == stats["n_annotations"]


def test_unsplit_dataset_and_table(tmp_path):
    stats = stats_table(make_dataset(tmp_path, synthetic=True))
    assert stats["by_split"]["unsplit"]["n_images"] == 67
    assert stats["by_body_part"]["leg"]["abnormal"]["unsplit"] == 12
    assert stats["synthetic"] is True

    console = Console(record=True, width=120)
    console.print(render_stats(stats))
    text = console.export_text()
    assert "unsplit" in text and "SYNTHETIC" in text
    assert "leg" in text and "hip" in text and "unknown" in text and "67" in text


def test_table_hides_unsplit_column_once_split(tmp_path):
    stats = stats_table(split_dataset(make_dataset(tmp_path), SplitConfig(seed=1)))
    table = render_stats(stats)
    headers = [c.header for c in table.columns]
    assert headers == ["body part", "label", "train", "val", "test", "total"]
    # One row per non-empty (part, label), then per-label totals and a grand total.
    assert table.row_count == 5 + 3


def test_markdown_report_has_the_table_and_flags_synthetic(tmp_path):
    from limbscan.data.dataset import DatasetBuilder
    from limbscan.data.stats import stats_markdown, stats_table
    from limbscan.io.meta import ImageMeta

    for synthetic in (False, True):
        b = DatasetBuilder(root=tmp_path, source="unit", synthetic=synthetic)
        meta = ImageMeta(width=10, height=10, format="png")
        b.add_image(tmp_path / "a.png", meta, label=1, body_part="knee")
        b.add_image(tmp_path / "b.png", meta, label=0, body_part="knee")
        b.add_image(tmp_path / "c.png", meta, label=0, body_part="toe")
        text = stats_markdown(stats_table(b.build()), title="T")
        assert "| knee | abnormal | 0 | 0 | 0 | 1 | 1 |" in text
        assert "| toe | normal | 0 | 0 | 0 | 1 | 1 |" in text
        assert "| all | all | 0 | 0 | 0 | 3 | 3 |" in text
        assert ("SYNTHETIC" in text) is synthetic
