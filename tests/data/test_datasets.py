"""PyTorch datasets: detection targets at cached scale, whole images, crops, joined sources, pixel statistics."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from limbscan.config import AugmentConfig
from limbscan.data.augment import OPS, PaperAugment
from limbscan.data.cache import load_cached
from limbscan.data.dataset import DatasetBuilder
from limbscan.data.datasets import (
    CropDataset,
    DetectionDataset,
    JoinedDataset,
    WholeImageDataset,
    detection_collate,
    join_sources,
    pixel_stats,
)
from limbscan.data.synth import synthesize
from limbscan.errors import LimbscanError
from limbscan.io import read_image
from limbscan.models.labels import ABNORMAL, NORMAL

CACHE_SIDE = 256  # below the phantoms' 320-448 px, so every target is rescaled

# The hand-made image: bright field, two dark lesions at known places (original pixels).
H, W = 300, 400
LESION_A = (240, 100, 40, 30)  # x, y, w, h: with a triangular polygon
LESION_B = (40, 200, 30, 30)  # no polygon: box-shaped mask
TRIANGLE = [240.0, 100.0, 280.0, 100.0, 240.0, 130.0]



@pytest.fixture(scope="module")
def synth_ds(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), n=12, seed=3, abnormal_fraction=0.5, progress=False)


@pytest.fixture(scope="module")
def marked_ds(tmp_path_factory):
    """Three images: abnormal with two lesions, normal, abnormal without any box."""
    root = tmp_path_factory.mktemp("marked")
    builder = DatasetBuilder(root=root, source="test")
    pixels = np.full((H, W), 0.7, dtype=np.float32)
    for x, y, w, h in (LESION_A, LESION_B):
        pixels[y : y + h, x : x + w] = 0.05
    for name, label in (("lesions.png", 1), ("normal.png", 0), ("unboxed.png", 1)):
        path = root / name
        Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(path)
        _, meta = read_image(path)
        image_id = builder.add_image(path, meta, label=label, body_part="leg", patient_id=name)
        if name == "lesions.png":
            builder.add_lesion(image_id, LESION_A, [TRIANGLE])
            builder.add_lesion(image_id, LESION_B)
    ds = builder.build()
    ds.save()
    return ds


def forced(op: str) -> PaperAugment:
    probs = {f"p_{name}": 0.0 for name in OPS}
    probs[f"p_{op}"] = 1.0
    return PaperAugment(AugmentConfig(**probs))


def xywh_to_xyxy(box, scale: float) -> list[float]:
    x, y, w, h = box
    return [x * scale, y * scale, (x + w) * scale, (y + h) * scale]


def assert_masks_inside_boxes(target: dict) -> None:
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(xs) > 0, "empty mask"
        x0, y0, x1, y1 = box.tolist()
        # Mask pixel i spans [i, i + 1): it must lie within the box, to a pixel of rounding.
        assert xs.min() >= np.floor(x0) - 1 and xs.max() + 1 <= np.ceil(x1) + 1
        assert ys.min() >= np.floor(y0) - 1 and ys.max() + 1 <= np.ceil(y1) + 1


# -- DetectionDataset ----------------------------------------------------------------------
def test_detection_items_shapes_and_dtypes(synth_ds):
    data = DetectionDataset(synth_ds, synth_ds.images, CACHE_SIDE)
    assert len(data) == 12
    for i, meta in enumerate(synth_ds.images):
        image, target = data[i]
        assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 1
        assert max(image.shape[-2:]) == CACHE_SIDE
        assert 0 <= image.min() and image.max() <= 1
        n = len(target["boxes"])
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
        assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, *image.shape[-2:])
        assert target["image_id"] == meta["id"]
        assert_masks_inside_boxes(target)
        if meta["label"] == 0:
            h, w = image.shape[-2:]
            assert target["labels"].tolist() == [NORMAL]
            assert target["boxes"].tolist() == [[0, 0, w, h]]
            assert bool(target["masks"].all())
        else:
            anns = synth_ds.annotations_for(meta["id"])
            assert target["labels"].tolist() == [ABNORMAL] * len(anns) and len(anns) > 0
            # Polygon masks of thin fracture lines: far from filling their boxes.
            assert target["masks"].sum() < 0.9 * sum(float((b[2] - b[0]) * (b[3] - b[1])) for b in target["boxes"])


def test_detection_boxes_are_scaled_onto_the_lesion(marked_ds):
    data = DetectionDataset(marked_ds, marked_ds.images, cache_side=200)  # 400 px -> 200 px
    image, target = data[0]
    assert image.shape == (1, 150, 200)
    expected = [xywh_to_xyxy(LESION_A, 0.5), xywh_to_xyxy(LESION_B, 0.5)]
    assert torch.allclose(target["boxes"], torch.tensor(expected), atol=1e-4)
    # Every dark pixel of the cached image lies in one of the boxes (a pixel of resize blur).
    ys, xs = torch.nonzero(image[0] < 0.35, as_tuple=True)
    assert len(xs) > 0
    inside = torch.zeros_like(xs, dtype=torch.bool)
    for x0, y0, x1, y1 in target["boxes"].tolist():
        inside |= (xs >= x0 - 1) & (xs < x1 + 1) & (ys >= y0 - 1) & (ys < y1 + 1)
    assert bool(inside.all())
    # ... and the boxes are mostly dark inside.
    for x0, y0, x1, y1 in target["boxes"].int().tolist():
        assert image[0, y0:y1, x0:x1].mean() < 0.2


def test_polygon_gives_its_shape_and_a_box_without_polygon_a_box_mask(marked_ds):
    _, target = DetectionDataset(marked_ds, marked_ds.images, cache_side=200)[0]
    triangle, square = target["masks"]
    # The right triangle fills about half its 20 x 15 box, its corner at the top left.
    assert 0.35 * 300 < triangle.sum() < 0.65 * 300
    assert triangle[50, 120] == 1 and triangle[64, 139] == 0
    assert square.sum() == 15 * 15
    assert_masks_inside_boxes(target)


def test_abnormal_image_without_boxes_is_boxed_whole_or_skipped(marked_ds):
    data = DetectionDataset(marked_ds, marked_ds.images, cache_side=200)
    image, target = data[2]
    assert target["labels"].tolist() == [ABNORMAL]
    assert target["boxes"].tolist() == [[0, 0, image.shape[-1], image.shape[-2]]]
    skipping = DetectionDataset(marked_ds, marked_ds.images, cache_side=200, unboxed="skip")
    assert [im["file_name"] for im in skipping.images] == ["lesions.png", "normal.png"]
    with pytest.raises(LimbscanError, match="unboxed"):
        DetectionDataset(marked_ds, marked_ds.images, cache_side=200, unboxed="drop")


def test_flip_moves_lesion_boxes_and_masks(marked_ds):
    plain = DetectionDataset(marked_ds, marked_ds.images, cache_side=200)
    flipped = DetectionDataset(marked_ds, marked_ds.images, cache_side=200, augment=forced("flip"))
    image, target = plain[0]
    f_image, f_target = flipped[0]
    w = image.shape[-1]
    assert type(f_image) is torch.Tensor and type(f_target["boxes"]) is torch.Tensor
    assert torch.equal(f_image, image.flip(-1))
    mirrored = torch.stack(
        [w - target["boxes"][:, 2], target["boxes"][:, 1], w - target["boxes"][:, 0], target["boxes"][:, 3]], 1
    )
    assert torch.allclose(f_target["boxes"], mirrored)
    assert torch.equal(f_target["masks"], target["masks"].flip(-1))
    assert_masks_inside_boxes(f_target)


def test_shift_moves_the_whole_image_box_of_a_normal_image(marked_ds):
    torch.manual_seed(0)
    data = DetectionDataset(marked_ds, marked_ds.images, cache_side=200, augment=forced("shift"))
    image, target = data[1]
    h, w = image.shape[-2:]
    assert target["labels"].tolist() == [NORMAL]
    box = target["boxes"][0].tolist()
    assert box != [0, 0, w, h]  # clamped to the frame on the side it moved away from
    assert 0 < target["masks"][0].sum() < h * w
    assert_masks_inside_boxes(target)


@pytest.mark.parametrize("op", ["rotate", "scale", "shift"])
def test_augmented_synth_targets_stay_consistent(synth_ds, op):
    torch.manual_seed(1)
    data = DetectionDataset(synth_ds, synth_ds.images, CACHE_SIDE, augment=forced(op))
    for i in range(len(data)):
        image, target = data[i]
        n = len(target["boxes"])
        assert target["masks"].shape == (n, *image.shape[-2:]) and target["labels"].shape == (n,)
        widths = target["boxes"][:, 2:] - target["boxes"][:, :2]
        assert bool((widths >= 1).all())
        if n:
            assert_masks_inside_boxes(target)


def test_detection_collate_keeps_lists(synth_ds):
    data = DetectionDataset(synth_ds, synth_ds.images, CACHE_SIDE)
    loader = torch.utils.data.DataLoader(data, batch_size=3, collate_fn=detection_collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list)
    assert len(images) == len(targets) == 3
    assert [t["image_id"] for t in targets] == [im["id"] for im in synth_ds.images[:3]]
    assert detection_collate([]) == ([], [])


def test_datasets_pickle_for_worker_processes(synth_ds):
    data = DetectionDataset(synth_ds, synth_ds.images, CACHE_SIDE, augment=forced("flip"))
    clone = pickle.loads(pickle.dumps(data))
    assert torch.equal(clone[0][0], data[0][0])


# -- WholeImageDataset and CropDataset -----------------------------------------------------
def test_whole_image_items(synth_ds):
    data = WholeImageDataset(synth_ds, synth_ds.images, CACHE_SIDE, image_size=96)
    assert data.labels == [im["label"] for im in synth_ds.images]
    for i, meta in enumerate(synth_ds.images):
        image, label = data[i]
        assert image.shape == (1, 96, 96) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert isinstance(label, float) and label == meta["label"]
        if meta["height"] > 1.2 * meta["width"]:  # portrait: padded left and right
            assert image[0, :, 0].abs().max() == 0 and image[0, :, -1].abs().max() == 0
            assert image[0, :, 48].max() > 0


def test_whole_image_augment_path_runs(synth_ds):
    plain = WholeImageDataset(synth_ds, synth_ds.images, CACHE_SIDE, image_size=64)
    flipped = WholeImageDataset(synth_ds, synth_ds.images, CACHE_SIDE, image_size=64, augment=forced("flip"))
    a, b = plain[0][0], flipped[0][0]
    assert b.shape == a.shape and type(b) is torch.Tensor
    assert not torch.equal(a, b)
    # Mirrored, not altered: every row keeps its pixels (the padding may differ by a column).
    assert torch.allclose(a.sum(-1), b.sum(-1), rtol=1e-4, atol=1e-4)
    torch.manual_seed(2)
    rotated = WholeImageDataset(synth_ds, synth_ds.images, CACHE_SIDE, image_size=64, augment=forced("rotate"))
    assert rotated[0][0].shape == (1, 64, 64)


def test_crop_dataset_cuts_the_box_in_original_pixels(marked_ds):
    image = marked_ds.images[0]
    x, y, w, h = LESION_A
    items = [(image, [x, y, x + w, y + h], 1), (image, [0, 0, 60, 60], 0)]
    data = CropDataset(marked_ds, items, cache_side=200, crop_size=48, margin=0.0)
    assert data.labels == [1, 0]
    lesion, label = data[0]
    assert lesion.shape == (1, 48, 48) and label == 1.0
    content = lesion[0][lesion[0].amax(1) > 0]  # rows that are not letterbox padding
    assert content.numel() > 0 and content.mean() < 0.15  # the lesion is dark
    background, label = data[1]
    assert label == 0.0 and background.mean() > 0.6  # a bright corner, square: no padding
    # Augmented crops keep their size.
    flipped = CropDataset(marked_ds, items, cache_side=200, crop_size=48, margin=0.0, augment=forced("flip"))
    assert torch.equal(flipped[0][0], lesion.flip(-1))


def test_crop_dataset_names_the_file_for_a_box_outside_the_image(marked_ds):
    image = marked_ds.images[0]
    data = CropDataset(marked_ds, [(image, [500, 500, 520, 520], 1)], cache_side=200, crop_size=32, margin=0.1)
    with pytest.raises(LimbscanError, match="lesions.png"):
        data[0]


# -- several sources (auxiliary training data) -----------------------------------------------
def test_join_sources_keeps_one_source_as_it_is(synth_ds):
    one = WholeImageDataset(synth_ds, synth_ds.images, CACHE_SIDE, 64)
    assert join_sources([one]) is one
    joined = join_sources([one, WholeImageDataset(synth_ds, synth_ds.images[:5], CACHE_SIDE, 64)])
    assert isinstance(joined, JoinedDataset) and joined.sizes == [12, 5] and len(joined) == 17
    assert joined.labels == one.labels + one.labels[:5]
    assert torch.equal(joined[13][0], one[1][0])
    with pytest.raises(LimbscanError, match="no source"):
        join_sources([])


# -- statistics ----------------------------------------------------------------------------
def test_pixel_stats_match_numpy_and_ignore_order(synth_ds):
    images = synth_ds.images
    mean, std = pixel_stats(synth_ds, images, CACHE_SIDE)
    pixels = np.concatenate([load_cached(synth_ds, im, CACHE_SIDE).ravel() for im in images])
    assert mean == pytest.approx(float(pixels.mean()), rel=1e-6)
    assert std == pytest.approx(float(pixels.std()), rel=1e-5)
    assert 0 < mean < 1 and 0 < std < 0.5
    subset = pixel_stats(synth_ds, images, CACHE_SIDE, max_images=5)
    assert subset == pixel_stats(synth_ds, list(reversed(images)), CACHE_SIDE, max_images=5)
    assert subset != (mean, std)
    with pytest.raises(LimbscanError, match="no training images"):
        pixel_stats(synth_ds, [], CACHE_SIDE)


def test_a_lesion_thinner_than_a_pixel_at_cache_scale_keeps_a_box(tmp_path):
    builder = DatasetBuilder(root=tmp_path, source="test")
    path = tmp_path / "thin.png"
    Image.fromarray(np.full((H, W), 128, dtype=np.uint8)).save(path)
    _, meta = read_image(path)
    image_id = builder.add_image(path, meta, label=1, body_part="toe")
    builder.add_lesion(image_id, [100, 50, 1, 40])  # 1 px wide: 0.25 px at cache side 100
    ds = builder.build()
    _, target = DetectionDataset(ds, ds.images, cache_side=100)[0]
    x0, _, x1, _ = target["boxes"][0].tolist()
    assert x1 - x0 == pytest.approx(2.0) and (x0 + x1) / 2 == pytest.approx(100.5 / 4)
    torch.manual_seed(0)
    shrunk = DetectionDataset(
        ds,
        ds.images,
        cache_side=100,
        augment=PaperAugment(
            AugmentConfig(p_none=0.0, p_scale=1.0, p_flip=0.0, p_rotate=0.0, p_shift=0.0, scale_range=(0.85, 0.85))
        ),
    )
    for _ in range(3):
        _, target = shrunk[0]
        assert target["labels"].tolist() == [ABNORMAL]
        assert target["masks"].sum() > 0
