"""Training speed: images/s of one training step (forward, backward, optimizer step) for each of
limbscan's networks, channels-last (their default) against contiguous, beside torchvision's
``maskrcnn_resnet50_fpn`` at its defaults on the same detection batches, in one run.

Batches come from an imported dataset's training split as the stages read them (the whole
image squashed to ``classifier.image_size``, the crop classifier's input at ``crop_size``,
the detector's images and targets at cached scale), without augmentation: the same pixels
for every row. Each row warms up, then times ``--steps`` steps; the two memory formats take
turns ``--repeats`` times and each keeps its median, so a machine's drift hits both alike.
torchvision's detector runs with random weights (no download; ``weights_backbone=None`` makes
its batch norms trainable, as it does for any model built without weights), 3 classes, grey
images repeated to 3 channels. Ratios are to torchvision's detector, as in ``inference.py``.

    .venv/bin/python -m benchmarks.train_speed bench/fracatlas \\
        --out benchmarks/results/train_speed.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import TORCHVISION, command, loadavg, machine_info, write_report
from limbscan.config import load_config, stage_config
from limbscan.data.dataset import Dataset
from limbscan.data.datasets import DetectionDataset, WholeImageDataset, detection_collate
from limbscan.models.backbones import set_memory_format
from limbscan.models.classifier import build_classifier
from limbscan.models.detector import build_detector, detector_param_groups

FORMATS = {"channels-last": torch.channels_last, "contiguous": torch.contiguous_format}


def classifier_row(cfg: Any, images: list[torch.Tensor]) -> Callable:
    """make(format) -> one training step of ``cfg.classifier`` on ``images`` as one batch."""
    x = torch.stack(images)
    y = (torch.arange(len(images)) % 4 == 0).float()

    def make(memory_format: torch.memory_format) -> Callable[[], None]:
        torch.manual_seed(0)
        model = set_memory_format(build_classifier(cfg.classifier, 0.45, 0.25), memory_format).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4)

        def step() -> None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    return make


def detector_row(cfg: Any, batches: list[tuple[list, list]]) -> Callable:
    def make(memory_format: torch.memory_format) -> Callable[[], None]:
        torch.manual_seed(0)
        model = set_memory_format(build_detector(cfg.detector, 0.45, 0.25), memory_format).train()
        opt = torch.optim.SGD(detector_param_groups(model, 1e-3, 2.5e-3, 1e-4), momentum=0.9)
        return _detection_step(model, opt, batches, lambda im: im)

    return make


def torchvision_row(batches: list[tuple[list, list]]) -> Callable:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    def make(_: torch.memory_format) -> Callable[[], None]:
        torch.manual_seed(0)
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=2.5e-3, momentum=0.9)
        return _detection_step(model, opt, batches, lambda im: im.expand(3, -1, -1))

    return make


def _detection_step(model: Any, opt: Any, batches: list, prepare: Callable) -> Callable[[], None]:
    turn = [0]

    def step() -> None:
        images, targets = batches[turn[0] % len(batches)]
        turn[0] += 1
        loss = sum(model([prepare(im) for im in images], targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def measure(name: str, make: Callable, per_step: int, formats: list[str], warmup: int, steps: int,
            repeats: int) -> list[dict]:
    seconds: dict[str, list[float]] = {f: [] for f in formats}
    for _ in range(repeats):
        for fmt in formats:
            seconds[fmt].append(time_steps(make(FORMATS[fmt]), warmup, steps))
            print(f"{name:<34} {fmt:<14} {per_step / seconds[fmt][-1]:7.2f} images/s", flush=True)
    return [
        {"model": name, "memory_format": fmt, "images_per_step": per_step, "steps": steps, "repeats": repeats,
         "seconds_per_step": [round(s, 4) for s in seconds[fmt]],
         "images_per_s": round(per_step / statistics.median(seconds[fmt]), 3)}
        for fmt in formats
    ]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path, help="an imported, split dataset folder (limbscan data import, data split)")
    ap.add_argument("--config", type=Path, default=Path("configs/cpu.yaml"))
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as limbscan train takes them")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-torchvision", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed.json"))
    args = ap.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config, args.overrides)
    whole = stage_config(cfg, "whole-image")
    ds = Dataset.load(args.dataset)
    train = ds.split_images("train")
    if not train:
        raise SystemExit(f"{args.dataset}: no training images (run limbscan data split first)")
    side = int(cfg.data.cache.longest_side)
    batch, per_det = int(cfg.train.batch_size), int(cfg.train.detector_batch_size)
    size, crop = int(whole.classifier.image_size), int(cfg.classifier.crop_size)
    full = WholeImageDataset(ds, train[:batch], side, size, resize=whole.classifier.image_resize)
    small = WholeImageDataset(ds, train[:batch], side, crop, resize="squash")
    det = DetectionDataset(ds, train[: 8 * per_det], side)  # 8 batches, cycled
    batches = [detection_collate([det[i] for i in range(j, j + per_det)]) for j in range(0, len(det), per_det)]
    batches = [(list(b[0]), list(b[1])) for b in batches if len(b[0]) == per_det]

    rows: list[dict] = []
    formats = list(FORMATS)
    start = time.time()
    load = loadavg()
    make = classifier_row(whole, [full[i][0] for i in range(len(full))])
    rows += measure(f"whole-image classifier ({size} px)", make, len(full), formats, args.warmup, args.steps, args.repeats)
    make = classifier_row(cfg, [small[i][0] for i in range(len(small))])
    rows += measure(f"crop classifier ({crop} px)", make, len(small), formats, args.warmup, args.steps, args.repeats)
    rows += measure("detector", detector_row(cfg, batches), per_det, formats, args.warmup, args.steps, args.repeats)
    if not args.skip_torchvision:
        rows += measure(TORCHVISION, torchvision_row(batches), per_det, ["contiguous"], 1,
                        max(2, args.steps // 2), args.repeats)
        peer = next(r["images_per_s"] for r in rows if r["model"] == TORCHVISION)
        for r in rows:
            r["x_torchvision"] = round(r["images_per_s"] / peer, 2)
    for name in {r["model"] for r in rows}:
        by = {r["memory_format"]: r for r in rows if r["model"] == name}
        if len(by) == 2:
            by["channels-last"]["x_contiguous"] = round(by["channels-last"]["images_per_s"] / by["contiguous"]["images_per_s"], 2)
    result = {
        "benchmark": "train_speed",
        "command": command(__spec__.name, argv),
        "machine": machine_info(args.threads),
        "loadavg_start": load,
        "loadavg_end": loadavg(),
        "config": str(args.config),
        "seconds": round(time.time() - start, 1),
        "rows": rows,
    }
    return write_report(args.out, result)


if __name__ == "__main__":
    main()
