"""ONNX copies of a bundle's models (``limbscan export --onnx``), each checked against PyTorch.

Every classifier is written as ``onnx/<scenario>.onnx`` with its probability as a second output,
and ONNX Runtime's probabilities must match PyTorch's within :data:`ONNX_TOLERANCE` or the
export fails. The detector is exported where torch can trace it; where it cannot, a note in the
manifest says why and the bundle still holds the classifiers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from limbscan.errors import LimbscanError
from limbscan.rundir import RunDir
from limbscan.scenarios import classifier_scenarios, info

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
# ONNX against PyTorch, on probabilities: far above float32 noise, far below any decision.
ONNX_TOLERANCE = 1e-4


def export_onnx(bundle: Path, scenarios: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Write ``onnx/<scenario>.onnx`` beside the bundle's checkpoints and check each against
    PyTorch with ONNX Runtime; returns (scenario -> relative path, scenario -> note).

    A model whose ONNX outputs differ from PyTorch's fails the export. The detector is
    exported where torch can trace it; where it cannot, the note says why and the bundle
    still holds the classifiers.
    """
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise LimbscanError(f"--onnx needs the onnx and onnxruntime packages ({err.name} is not installed)") from err
    from limbscan.models.loading import load_classifier

    folder = bundle / ONNX_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    notes: dict[str, str] = {}
    for name in classifier_scenarios():
        if name not in scenarios:
            continue
        model, extra = load_classifier(RunDir(bundle).best(name))
        size = int(extra["input_size"])
        path = folder / f"{name}.onnx"
        _onnx_export(_with_probability(model), (_torch().rand(2, 1, size, size),), path, ["image"],
                     ["logit", "probability"], {"image": {0: "batch"}, "logit": {0: "batch"},
                                                "probability": {0: "batch"}})
        _check_classifier(model, path, size)
        files[name] = path.relative_to(bundle).as_posix()
        resize = extra.get("image_resize", "letterbox")
        tta = " (limbscan averages it with the mirrored image's)" if extra.get("tta_flip") else ""
        notes[name] = (f"input 'image' [B, 1, {size}, {size}] float32 in [0, 1], {resize}ed as limbscan does; "
                       f"outputs 'logit' [B] and 'probability' [B]{tta}")
    if "detector" in scenarios:
        path = folder / "detector.onnx"
        try:
            _export_detector(RunDir(bundle).best("detector"), path)
        except _OnnxMismatch:
            raise
        except Exception as err:  # noqa: BLE001 - any tracing failure only leaves the detector out
            path.unlink(missing_ok=True)
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            notes["detector"] = f"not exported: torch.onnx.export failed ({type(err).__name__}: {first})"
            log.warning("detector: %s", notes["detector"])
        else:
            files["detector"] = path.relative_to(bundle).as_posix()
            notes["detector"] = ("one image per call: input 'image' [1, H, W] float32 in [0, 1] at the bundle's "
                                 "cache_side; outputs 'boxes' [N, 4] (input pixels), 'labels' [N], 'scores' [N], "
                                 "'masks' [N, 1, H, W]; exported with the TorchScript exporter (torch.export "
                                 "cannot trace torchvision's NMS with data-dependent shapes)")
    for name in scenarios:
        if not info(name).classifier and info(name).needs and name not in files:
            notes[name] = (f"no network of its own, not exported: it combines {', '.join(info(name).needs)}; "
                           "bundle.json's fusion entry gives its weights")
    return files, notes


class _OnnxMismatch(LimbscanError):
    """ONNX Runtime's outputs differ from PyTorch's: the export is not trustworthy."""


def _torch():
    import torch

    return torch


def _with_probability(model):
    """The classifier with its probability as a second output, so ONNX users need no sigmoid."""
    torch = _torch()

    class WithProbability(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logit = self.inner(image)
            return logit, torch.sigmoid(logit)

    return WithProbability(model)


def _onnx_export(model, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    import warnings

    torch = _torch()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which is ~25x slower
        # here (15 s against 0.6 s per classifier) and cannot trace the detector at all.
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def _check_classifier(model, path: Path, size: int, n: int = 3, seed: int = 0) -> None:
    import numpy as np
    import onnxruntime as ort

    torch = _torch()
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probability"], {"image": x.numpy()})[0]
    with torch.inference_mode():
        want = torch.sigmoid(model(x)).numpy()
    gap = float(np.abs(got - want).max())
    if not gap <= ONNX_TOLERANCE:
        raise _OnnxMismatch(f"{path.name}: ONNX Runtime's probabilities differ from PyTorch's by {gap:.2g} "
                            f"(tolerance {ONNX_TOLERANCE}); the ONNX export cannot be trusted")


def _export_detector(checkpoint: Path, path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    from limbscan.models.labels import ABNORMAL
    from limbscan.models.loading import load_checkpoint, load_detector

    torch = _torch()
    model = load_detector(checkpoint).eval()
    side = int(load_checkpoint(checkpoint)["config"]["data"]["cache"]["longest_side"])
    g = torch.Generator().manual_seed(0)
    _onnx_export(model, ([torch.rand(1, side, side * 3 // 4, generator=g)],), path, ["image"],
                 ["boxes", "labels", "scores", "masks"],
                 {"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "labels": {0: "n"}, "scores": {0: "n"},
                  "masks": {0: "n", 2: "height", 3: "width"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # A different size from the traced one: the exported graph must not have frozen it.
    for shape in ((1, side * 3 // 4, side), (1, side // 2, side // 3)):
        x = torch.rand(*shape, generator=g)
        boxes, labels, scores, _ = session.run(None, {"image": x.numpy()})
        with torch.inference_mode():
            want = model([x])[0]

        def best(b, lab, sc):
            keep = np.asarray(lab) == ABNORMAL
            if not keep.any():
                return 0.0, np.zeros(4)
            i = int(np.argmax(np.asarray(sc)[keep]))
            return float(np.asarray(sc)[keep][i]), np.asarray(b)[keep][i]

        got_score, got_box = best(boxes, labels, scores)
        want_score, want_box = best(want["boxes"].numpy(), want["labels"].numpy(), want["scores"].numpy())
        if abs(got_score - want_score) > ONNX_TOLERANCE or np.abs(got_box - want_box).max() > 0.01:
            raise _OnnxMismatch(
                f"{path.name}: ONNX Runtime's best abnormal box differs from PyTorch's on a {shape[1]}x{shape[2]} "
                f"input (score {got_score:.6f} against {want_score:.6f}); the ONNX export cannot be trusted"
            )
