"""Localisation quality of the detector and the cascade: box AP at IoU 0.5 and top-box hit rate.

Boxes are ``[x0, y0, x1, y1]`` in original-image pixels, keyed by integer image id. ``truths`` maps
each evaluated image to its lesion boxes (``[]`` or absent: normal, so every box predicted on it is
a false positive); pass predictions for the evaluated split only. Undefined results are ``None``.
AP is pycocotools' COCOeval at IoU 0.5, one category, all areas, 101-point interpolation.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from limbscan.eval.metrics import MetricsInputError

HIT_MODES: tuple[str, ...] = ("iou", "center", "iomin")

_LESION = 1  # the single COCO category id


def box_ap50(
    predictions: Mapping[int, Mapping[str, Any]],
    truths: Mapping[int, Sequence[Sequence[float]]],
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
) -> float | None:
    """COCO box AP at IoU 0.5 for the single class "lesion"; ``None`` when there are no truth boxes.

    ``predictions``: image id -> ``{"boxes": [[x0, y0, x1, y1], ...], "scores": [...]}``.
    ``image_sizes``: image id -> ``(width, height)``; only written into the COCO image records
    (COCOeval does not need them for boxes), so it may be omitted.
    """
    gt_boxes = {int(i): _boxes(b, f"truth boxes of image {i}", need_area=True) for i, b in truths.items()}
    dets = {int(i): _detections(p, i) for i, p in predictions.items()}
    if sum(len(b) for b in gt_boxes.values()) == 0:
        return None
    if sum(len(s) for _, s in dets.values()) == 0:
        return 0.0  # lesions exist and nothing was predicted: recall 0 everywhere

    image_ids = sorted(set(gt_boxes) | set(dets))
    sizes = image_sizes or {}
    images = [{"id": i, "width": int(sizes.get(i, (0, 0))[0]), "height": int(sizes.get(i, (0, 0))[1])}
              for i in image_ids]
    annotations = []
    for i in image_ids:
        for x0, y0, x1, y1 in gt_boxes.get(i, np.empty((0, 4))):
            w, h = float(x1 - x0), float(y1 - y0)
            # ids start at 1: COCOeval stores the matched gt id in dtMatches and treats 0 as "no match"
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": _LESION,
                                "bbox": [float(x0), float(y0), w, h], "area": w * h, "iscrowd": 0})
    results = [
        {"image_id": i, "category_id": _LESION, "score": float(s),
         "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
        for i, (boxes, scores) in dets.items()
        for (x0, y0, x1, y1), s in zip(boxes, scores)
    ]
    max_per_image = max(len(s) for _, s in dets.values())

    # pycocotools prints progress on every step; a library must not write to the user's stdout
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": _LESION, "name": "lesion"}]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = image_ids
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        # COCO keeps only the top maxDets boxes per image; raise the cap so none is silently dropped
        ev.params.maxDets = [max(100, max_per_image)]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, 0, 0, 0]  # [iou, recall, class, area, maxDets]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def top_box_hit_rate(
    top_boxes: Mapping[int, Sequence[float] | None],
    truths: Mapping[int, Sequence[Sequence[float]]],
    iou: float = 0.5,
    mode: str = "iou",
) -> dict[str, Any]:
    """Share of abnormal images (those with truth boxes) whose top predicted box hits a lesion.

    ``mode="iou"``: IoU with some lesion ``>= iou``. ``mode="center"``: the box centre lies in a
    lesion box (``iou`` is unused and reported as ``None``). ``mode="iomin"``: intersection over
    the smaller of the two boxes ``>= iou``, which does not punish a crop drawn with a margin
    around the lesion. An abnormal image with no top box (``None`` or absent) is a miss;
    normal images are ignored.
    """
    if mode not in HIT_MODES:
        raise MetricsInputError(f"unknown hit mode {mode!r}; use one of {list(HIT_MODES)}")
    if mode != "center" and not 0.0 < iou <= 1.0:
        raise MetricsInputError(f"iou threshold must be in (0, 1], got {iou}")
    n = hits = 0
    for image_id, lesion_list in truths.items():
        lesions = _boxes(lesion_list, f"truth boxes of image {image_id}", need_area=True)
        if len(lesions) == 0:
            continue
        n += 1
        top = top_boxes.get(image_id)
        if top is None:
            continue
        box = _boxes([top], f"top box of image {image_id}", need_area=False)
        hits += bool(_hits(box[0], lesions, iou, mode))
    return {"hit_rate": hits / n if n else None, "n": n, "hits": hits,
            "mode": mode, "iou": None if mode == "center" else float(iou)}


def top_boxes_from(predictions: Mapping[int, Mapping[str, Any]]) -> dict[int, list[float] | None]:
    """The highest-scoring box of each image (``None`` where the image has no box)."""
    out: dict[int, list[float] | None] = {}
    for i, p in predictions.items():
        boxes, scores = _detections(p, i)
        out[int(i)] = [float(v) for v in boxes[int(np.argmax(scores))]] if len(scores) else None
    return out


def localisation_summary(
    predictions: Mapping[int, Mapping[str, Any]],
    truths: Mapping[int, Sequence[Sequence[float]]],
    top_boxes: Mapping[int, Sequence[float] | None] | None = None,
    iou: float = 0.5,
    mode: str = "iou",
) -> dict[str, Any]:
    """AP50 and top-box hit rate in one JSON-friendly dict.

    ``top_boxes`` defaults to each image's highest-scoring predicted box; the cascade passes
    its own (the box whose crop scored highest), which need not be the detector's best.
    """
    if top_boxes is None:
        top_boxes = top_boxes_from(predictions)
    hit = top_box_hit_rate(top_boxes, truths, iou=iou, mode=mode)
    return {"ap50": box_ap50(predictions, truths), "top_box_hit_rate": hit["hit_rate"],
            "top_box_hits": hit["hits"], "n_images_with_lesions": hit["n"],
            "hit_mode": hit["mode"], "hit_iou": hit["iou"]}


def _hits(box: np.ndarray, lesions: np.ndarray, thr: float, mode: str) -> bool:
    if mode == "center":
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        inside = (lesions[:, 0] <= cx) & (cx <= lesions[:, 2]) & (lesions[:, 1] <= cy) & (cy <= lesions[:, 3])
        return bool(inside.any())
    if mode == "iou":
        ious = box_iou(torch.as_tensor(box[None], dtype=torch.float64), torch.as_tensor(lesions, dtype=torch.float64))
        return bool((ious >= thr).any())
    wh = np.clip(np.minimum(box[2:], lesions[:, 2:]) - np.maximum(box[:2], lesions[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    smaller = np.minimum(area(box), area(lesions))
    # a degenerate (zero-area) predicted box cannot hit anything
    ratio = np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)
    return bool((ratio >= thr).any())


def _detections(p: Mapping[str, Any], image_id: Any) -> tuple[np.ndarray, np.ndarray]:
    where = f"predictions of image {image_id}"
    try:
        boxes_in, scores_in = p["boxes"], p["scores"]
    except (KeyError, TypeError) as err:
        raise MetricsInputError(f"{where}: need a dict with 'boxes' and 'scores'") from err
    boxes = _boxes(boxes_in, where, need_area=False)
    scores = np.asarray(scores_in, dtype=float).reshape(-1)
    if len(scores) != len(boxes):
        raise MetricsInputError(f"{where}: {len(boxes)} boxes but {len(scores)} scores")
    if not np.isfinite(scores).all():
        raise MetricsInputError(f"{where}: scores must be finite")
    return boxes, scores


def _boxes(boxes: Any, where: str, need_area: bool) -> np.ndarray:
    """Validate xyxy boxes; predicted boxes may be degenerate (they then match nothing)."""
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    try:
        arr = np.asarray(boxes, dtype=float)
    except (TypeError, ValueError) as err:
        raise MetricsInputError(f"{where}: boxes must be lists of four numbers") from err
    if arr.size == 0:
        return np.empty((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise MetricsInputError(f"{where}: boxes must be [x0, y0, x1, y1], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise MetricsInputError(f"{where}: boxes must be finite")
    bad = (arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1]) if need_area else (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if bad.any():
        raise MetricsInputError(f"{where}: box {arr[bad][0].tolist()} has x1 < x0 or y1 < y0 (or no area)")
    return arr
