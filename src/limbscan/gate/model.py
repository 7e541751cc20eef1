"""The pixel check of the input gate: frozen ImageNet EfficientNet-Lite0 features, then two tests.

A body-region classifier (RBF SVM on standardised features: lower limb against other radiographs
and pictures) and a cosine distance to the 5th nearest lower-limb training image (what neither
class looked like). In scope when both pass. Features are averaged over the image turned by 0,
90, 180 and 270 degrees; everything learned is a few arrays in one ``gate.npz`` (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from limbscan.errors import LimbscanError
from limbscan.gate import ScopeVerdict
from limbscan.io.meta import ImageMeta

GATE_FILE = "gate.npz"
GATE_FORMAT = 1
BACKBONE = "efficientnet_lite0"
INPUT_SIDE = 224
NO_PIXEL_CHECK = ScopeVerdict(True, "none", "no pixel gate in this bundle and no header that decides")
_ARRAYS = ("scaler_mean", "scaler_scale", "support", "dual_coef", "intercept", "gamma", "reference")
NEIGHBOUR = 5  # the distance is to the 5th nearest lower-limb training image


class FeatureExtractor:
    """Pooled ImageNet features of grey images, rotation-averaged; one per process is plenty."""

    def __init__(self, threads: int | None = None):
        from limbscan.models.backbones import create_backbone, get_spec

        spec = get_spec(BACKBONE)
        self.net = create_backbone(BACKBONE, pretrained=True, num_classes=0).eval()
        self.mean, self.std = float(spec.mean[0]), float(spec.std[0])

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """1 x 1 x S x S: the image squashed to the gate's square, normalised as ImageNet training was."""
        x = torch.as_tensor(np.ascontiguousarray(pixels), dtype=torch.float32)[None, None]
        x = F.interpolate(x, size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear", antialias=True, align_corners=False)
        return (x.clamp(0, 1) - self.mean) / self.std

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """N x 1280 float32 features, each the mean over the image's four quarter turns."""
        if not images:
            return np.zeros((0, 1280), np.float32)
        x = torch.cat([self.tensor(p) for p in images])
        turns = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        feats = self.net(turns).reshape(4, len(images), -1).mean(0)
        return feats.numpy().astype(np.float32)


@dataclass
class PixelGate:
    """The learned part of the gate: arrays from ``gate.npz`` and what they were chosen on."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    _features: FeatureExtractor | None = None

    @classmethod
    def load(cls, path: str | Path) -> PixelGate:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: np.asarray(npz[k]) for k in _ARRAYS}
                meta = json.loads(str(npz["meta"]))
        except (OSError, KeyError, ValueError) as err:
            raise LimbscanError(f"{path}: not a limbscan input gate ({type(err).__name__}: {err})") from None
        if meta.get("format") != GATE_FORMAT or meta.get("backbone") != BACKBONE:
            raise LimbscanError(f"{path}: gate format {meta.get('format')} on {meta.get('backbone')}; this limbscan "
                                f"reads format {GATE_FORMAT} on {BACKBONE} (retrain it with `limbscan gate train`)")
        return cls(arrays, meta)

    def save(self, path: str | Path) -> Path:
        from limbscan.utils.files import atomic_file

        path = Path(path)
        with atomic_file(path, "wb") as out:
            np.savez(out, meta=np.array(json.dumps(self.meta, sort_keys=True)), **self.arrays)
        return path

    @property
    def thresholds(self) -> tuple[float, float]:
        """(least region score, greatest distance) that is still in scope."""
        return float(self.meta["region_threshold"]), float(self.meta["distance_threshold"])

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        if self._features is None:
            self._features = FeatureExtractor()
        return self._features(images)

    def region_score(self, feats: np.ndarray) -> np.ndarray:
        """The classifier's decision value: above 0 it leans to a lower-limb radiograph."""
        a = self.arrays
        z = (feats - a["scaler_mean"]) / a["scaler_scale"]
        sv = a["support"].astype(np.float32)
        sq = (z * z).sum(1)[:, None] + (sv * sv).sum(1)[None] - 2 * z @ sv.T
        return np.exp(-float(a["gamma"]) * sq.clip(min=0)) @ a["dual_coef"] + float(a["intercept"])

    def distance(self, feats: np.ndarray) -> np.ndarray:
        """Cosine distance (as the Euclidean one of unit vectors) to the NEIGHBOUR-th nearest training image."""
        ref = self.arrays["reference"].astype(np.float32)
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(min=1e-12)
        sq = 2 - 2 * unit @ ref.T
        k = min(NEIGHBOUR, ref.shape[0]) - 1
        return np.sqrt(np.partition(sq, k, axis=1)[:, k].clip(min=0))

    def judge(self, feats: np.ndarray) -> list[ScopeVerdict]:
        """A verdict per row of features."""
        t_region, t_distance = self.thresholds
        out = []
        for r, d in zip(self.region_score(feats), self.distance(feats), strict=True):
            r, d = float(r), float(d)
            if d > t_distance:
                reason = (f"the pixels are unlike any radiograph limbscan was trained on (distance {d:.2f} > "
                          f"{t_distance:.2f}): a photograph, a drawing or another kind of image")
            elif r < t_region:
                reason = (f"the pixels look like a radiograph of another body part (lower-limb score {r:.2f} < "
                          f"{t_region:.2f})")
            else:
                reason = f"the pixels look like a lower-limb radiograph (score {r:.2f}, distance {d:.2f})"
            out.append(ScopeVerdict(r >= t_region and d <= t_distance, "pixels", reason, r, d))
        return out

    def check(self, images: list[np.ndarray]) -> list[ScopeVerdict]:
        """Verdicts for grey float images in [0, 1] (bone bright), as :func:`limbscan.io.read_image` gives."""
        return self.judge(self.features(images))


def builtin_gate_path() -> Path:
    """The gate the package ships (``limbscan gate train`` on FracAtlas, see docs/input-gate.md)."""
    return Path(__file__).with_name(GATE_FILE)




def scope_verdicts(gate: PixelGate | None, pixels: Sequence[np.ndarray],
                   metas: Sequence[ImageMeta | None]) -> list[ScopeVerdict]:
    """Each image's verdict: its DICOM header where that decides, else ``gate``'s pixel check (one
    batch), else in scope (``gate`` None: a bundle without a pixel check)."""
    from limbscan.gate import header_verdict

    verdicts: list[ScopeVerdict | None] = [None if meta is None else header_verdict(meta) for meta in metas]
    ask = [i for i, v in enumerate(verdicts) if v is None]
    if ask and gate is not None:
        for i, v in zip(ask, gate.check([pixels[i] for i in ask]), strict=True):
            verdicts[i] = v
    return [NO_PIXEL_CHECK if v is None else v for v in verdicts]


def judge_files(gate: PixelGate | None, paths: Sequence[str | Path], *, progress: bool = False,
                batch: int = 8) -> list[ScopeVerdict | None]:
    """The gate's verdict on each file, as ``predict`` gives it; None for a file that does not read."""
    from rich.progress import track

    from limbscan.errors import BadInputError
    from limbscan.io import read_image

    verdicts: list[ScopeVerdict | None] = [None] * len(paths)
    pending: list[tuple[int, np.ndarray, ImageMeta]] = []

    def flush():
        for (i, _, _), v in zip(pending, scope_verdicts(gate, [p for _, p, _ in pending], [m for *_, m in pending]),
                                strict=True):
            verdicts[i] = v
        pending.clear()

    for i, path in enumerate(track(paths, description="input gate", disable=not progress, transient=True)):
        try:
            pending.append((i, *read_image(path)))
        except BadInputError:
            continue
        if len(pending) == batch:
            flush()
    flush()
    return verdicts


def gate_counts(verdicts: list[ScopeVerdict | None]) -> dict[str, Any]:
    """What the gate did to a set of images: how many it kept out, by who decided."""
    read = [v for v in verdicts if v is not None]
    out = [v for v in read if not v.in_scope]
    return {"n": len(read), "n_out_of_scope": len(out),
            "out_of_scope_share": round(len(out) / len(read), 4) if read else None,
            "by": {who: sum(v.decided_by == who for v in out) for who in ("header", "pixels")}}


__all__ = ["BACKBONE", "GATE_FILE", "INPUT_SIDE", "NO_PIXEL_CHECK", "FeatureExtractor", "PixelGate", "builtin_gate_path",
           "gate_counts", "judge_files", "scope_verdicts"]
