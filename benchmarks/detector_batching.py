"""What batching moves: a trained detector's validation scores one image per forward (the pass
every scorer runs) against two images per forward padded to the larger one (what training's
validation and the cascade's proposals ran before the scenario redesign), images paired in split
order as a DataLoader without shuffling paired them.

    .venv/bin/python -m benchmarks.detector_batching bench/out/run bench/fracatlas \\
        --out benchmarks/results/detector_batching.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks._common import write_report
from limbscan.data.dataset import Dataset
from limbscan.models.detector import describe_detections
from limbscan.models.loading import cache_side, load_checkpoint, load_detector
from limbscan.rundir import RunDir
from limbscan.scenarios.base import ImageInput


def scores(detector, inputs: list[ImageInput], per_forward: int) -> tuple[list[float], list[list]]:
    found, tops = [], []
    for i in range(0, len(inputs), per_forward):
        chunk = inputs[i : i + per_forward]
        for im, out in zip(chunk, detector.detect([c.pixels for c in chunk]).outputs, strict=True):
            d = describe_detections(out, im.width, im.height, tuple(im.pixels.shape[-2:]), 1)
            found.append(d.score)
            tops.append(d.top)
    return found, tops


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="run or bundle folder with detector/best.pt")
    ap.add_argument("dataset", type=Path, help="the dataset it was trained on (its val split is scored)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/detector_batching.json"))
    args = ap.parse_args(argv)
    path = RunDir(args.run).best("detector")
    ckpt = load_checkpoint(path)
    detector = load_detector(path, ckpt)
    ds = Dataset.load(args.dataset)
    val = ds.split_images("val")
    inputs = [ImageInput.from_dataset(ds, im, cache_side(ckpt)) for im in val]
    labels = [int(im["label"]) for im in val]
    with torch.inference_mode():
        one, one_tops = scores(detector, inputs, 1)
        two, two_tops = scores(detector, inputs, 2)
    change = np.abs(np.asarray(one) - np.asarray(two))
    result = {
        "run": str(args.run), "val_images": len(val), "val_abnormal": sum(labels),
        "auc_one_per_forward": roc_auc_score(labels, one), "auc_two_per_forward": roc_auc_score(labels, two),
        "max_score_change": float(change.max()), "mean_score_change": float(change.mean()),
        "images_whose_top_box_moved": sum(1 for a, b in zip(one_tops, two_tops, strict=True) if a != b),
    }
    print(json.dumps(result, indent=1))
    return write_report(args.out, result)


if __name__ == "__main__":
    main()
