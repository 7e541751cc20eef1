import json

import pytest

from limbscan.data.dataset import Dataset, DatasetBuilder, check_box
from limbscan.errors import BadInputError, LimbscanError
from limbscan.io.meta import ImageMeta
from limbscan.utils.files import write_json_atomic


def _meta(w=100, h=80):
    return ImageMeta(width=w, height=h, format="png")


def test_builder_round_trip(tmp_path):
    b = DatasetBuilder(root=tmp_path, source="test")
    inside = tmp_path / "images" / "a.png"
    outside = tmp_path.parent / "elsewhere.png"
    i1 = b.add_image(inside, _meta(), label=1, body_part="leg", patient_id="p1", attributes={"hardware": 1})
    i2 = b.add_image(outside, _meta(), label=0, body_part="hip")
    assert b.add_lesion(i1, [10, 10, 20, 30], [[10, 10, 30, 10, 30, 40]]) == 1
    ds = b.build()
    ds.save()
    back = Dataset.load(tmp_path)
    assert back.images[0]["file_name"] == "images/a.png"  # inside the dataset: relative
    assert back.image_path(back.images[0]) == tmp_path / "images" / "a.png"
    assert back.image_path(back.images[1]) == outside.resolve()  # outside: absolute
    assert [a["bbox"] for a in back.annotations_for(i1)] == [[10.0, 10.0, 20.0, 30.0]]
    assert back.annotations_for(i2) == []
    assert back.counts() == {("leg", 1, "none"): 1, ("hip", 0, "none"): 1}
    assert back.images[0]["attributes"] == {"hardware": 1}


def test_box_checks():
    assert check_box([-0.5, 0, 10.5, 80.5], 100, 80, "f") == [0.0, 0.0, 10.0, 80.0]  # sub-pixel overshoot clipped
    with pytest.raises(BadInputError, match=r"^f.png: box .* outside the 100x80 image"):
        check_box([90, 10, 30, 10], 100, 80, "f.png")
    with pytest.raises(BadInputError, match="no area"):
        check_box([1, 1, 0, 5], 100, 80, "f.png")
    with pytest.raises(BadInputError, match="not four numbers"):
        check_box([1, 2, 3], 100, 80, "f.png")
    with pytest.raises(BadInputError, match="not finite"):
        check_box([1, 2, float("nan"), 3], 100, 80, "f.png")


def test_bad_box_is_skipped_not_raised(tmp_path):
    b = DatasetBuilder(root=tmp_path, source="test")
    i = b.add_image(tmp_path / "x.png", _meta(), label=1, body_part="leg")
    assert b.add_lesion(i, [95, 70, 50, 50]) is None
    assert len(b.skipped) == 1 and "x.png" in str(b.skipped[0]) and "outside" in str(b.skipped[0])


def test_zero_size_image_and_bad_label_are_errors(tmp_path):
    b = DatasetBuilder(root=tmp_path, source="test")
    with pytest.raises(BadInputError, match="0x0"):
        b.add_image(tmp_path / "z.png", _meta(0, 0), label=0, body_part=None)
    with pytest.raises(BadInputError, match="label"):
        b.add_image(tmp_path / "z.png", _meta(), label=2, body_part=None)


def test_load_errors(tmp_path):
    with pytest.raises(LimbscanError, match="no dataset.json"):
        Dataset.load(tmp_path)
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(LimbscanError, match="not valid JSON"):
        Dataset.load(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"images": []}))
    with pytest.raises(LimbscanError, match="annotations"):
        Dataset.load(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "d.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not serialisable: fails mid-write
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]  # no temp file left behind
