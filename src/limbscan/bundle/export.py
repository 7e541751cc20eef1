"""A trained model as one self-checking folder: ``limbscan export RUN -o NAME.limbscan``.

A bundle mirrors a run folder, so everything that scores a run (``score_run``, ``limbscan
evaluate``) scores a bundle too::

    bundle.json            the manifest: operating points, preprocessing, sha256 of every other file
    config.yaml            the run's resolved config
    val_scores.json        the validation scores the thresholds were chosen on
    <scenario>/best.pt     weights and what rebuilding the model needs; no optimizer state
    onnx/<scenario>.onnx   with ``--onnx``: the classifiers (and the detector where it exports)

The operating points of each scenario are chosen here, once, on the run's validation scores,
and stored: every later use of the bundle (predict, serve, evaluate) applies the same ones.
``thresholds`` holds the balanced ("likely") one, as bundles have from the start;
``operating_points`` adds the high-sensitivity ("suspected") one (:mod:`limbscan.operating_points`)::

    "operating_points": {"cascade": {
        "likely":    {"threshold": 0.20, "rule": "youden", "val_sensitivity": 0.83, "val_specificity": 0.90},
        "suspected": {"threshold": 0.06, "rule": "sensitivity>=0.95", "val_sensitivity": 1.0,
                      "val_specificity": 0.41, "target_sensitivity": 0.95, "note": null}}}

A bundle without ``operating_points`` (exported before they existed) still loads, with no
suspected threshold; the format number did not change, since nothing older readers need moved.

``default_scenario`` is the scenario with the best held-out AUC on the validation split
(:func:`limbscan.scenarios.choose_default`: the base scenarios' validation AUC at their best
epoch, which that choice makes if anything optimistic, the fused one's out-of-fold AUC), or,
exported with ``--default-from-cv CV``, the best mean AUC across the folds of that ``limbscan cv``
(``default_cv`` records its folder, k and each scenario's mean and sd); ``default_reason``
says which with the numbers; a bundle exported before has no reason. With the fused scenario, ``fusion`` holds its rule, weights and both rules'
cross-validated AUCs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from limbscan.errors import BadInputError, LimbscanError
from limbscan.operating_points import (
    LIKELY,
    SUSPECTED,
    SUSPECTED_SENSITIVITY,
    check_sensitivity,
    choose_operating_points,
    rule_name,
)
from limbscan.rundir import BEST, VAL_SCORES_FILE, RunDir
from limbscan.scenarios import choose_default, classifier_scenarios, info
from limbscan.scenarios import default_scenario as _default_scenario
from limbscan.utils.files import sha256_file

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
BUILTIN_GATE = "builtin"  # export's default gate: the one limbscan ships (limbscan/gate/gate.npz)
MANIFEST = "bundle.json"
ONNX_DIR = "onnx"
CHECKPOINT = BEST  # a bundle keeps each scenario's best checkpoint, under the run's name for it
# What a bundle's checkpoint keeps: what load_classifier / load_detector read, and the epoch
# and AUC it was chosen at. Optimizer, scheduler, scaler, RNG state and history stay behind.
CHECKPOINT_KEYS = ("format", "stage", "epoch", "epochs", "model", "config", "extra", "best_auc", "best_epoch")
# ONNX against PyTorch, on probabilities: far above float32 noise, far below any decision.
ONNX_TOLERANCE = 1e-4


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def default_scenario(scenarios: list[str]) -> str:
    """The default without validation scores to choose by: see :func:`limbscan.scenarios.default_scenario`."""
    return _default_scenario(scenarios)


def default_from_validation(val: dict[str, Any], scenarios: list[str]) -> tuple[str, str]:
    """(scenario, why): the best held-out AUC on the run's validation scores
    (``val_scores.json``, where the fused scenario's scores are out-of-fold)."""
    from sklearn.metrics import roc_auc_score

    labels = [int(v) for v in val["labels"]]
    two_classes = len(set(labels)) == 2
    aucs = {name: float(roc_auc_score(labels, val["scores"][name])) if two_classes else None for name in scenarios}
    return choose_default(aucs)


def default_from_cv(cv_dir: str | Path, val: dict[str, Any], scenarios: list[str]) -> tuple[str, str, dict[str, Any]]:
    """(scenario, why, record): the best mean AUC across the folds of a finished ``limbscan cv``
    folder (its ``cv.json``) that scored every scenario of the run on the run's own dataset
    (train + val pooled; the test split is never in it). ``record`` goes into the manifest."""
    from limbscan.rundir import CvDir

    folder = CvDir(cv_dir)
    if not folder.summary.is_file():
        raise LimbscanError(f"{folder.summary}: not found; `limbscan cv` writes it once every fold is finished")
    try:
        summary = json.loads(folder.summary.read_text())
        found = {name: s["auc_mean"] for name, s in summary["scenarios"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise BadInputError(folder.summary, f"not a cross-validation summary ({type(err).__name__})") from err
    missing = [name for name in scenarios if name not in found]
    if missing:
        raise LimbscanError(
            f"{cv_dir}: its cross-validation did not score {', '.join(missing)}; rerun `limbscan cv` into it with "
            f"--scenario {','.join(scenarios)} (finished stages are kept)"
        )
    main = next((d for d in val.get("training_data") or [] if d.get("role") == "main"), None)
    ran_on, trained_on = summary.get("dataset_sha256"), (main or {}).get("dataset_sha256")
    if ran_on and trained_on and ran_on != trained_on:
        raise LimbscanError(
            f"{cv_dir}: cross-validated on another dataset.json (sha256 {ran_on[:12]}…) than the run trained on "
            f"({trained_on[:12]}…); the default must be chosen on the run's own data"
        )
    k = summary.get("k")
    means = {n: found[n] for n in scenarios}
    name, why = choose_default(means, cv=f"{k}-fold CV in {folder.root.name}")
    record = {"path": str(folder.root.resolve()), "k": k, "dataset_sha256": ran_on, "auc_mean": means,
              "auc_sd": {n: summary["scenarios"][n].get("auc_sd") for n in scenarios}}
    return name, why, record


# -- reading -------------------------------------------------------------------------------
def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """The bundle's ``bundle.json``, checked: a bundle, a format this limbscan reads, and (with
    ``verify``) every file present with the sha256 the manifest records. A bundle written by
    another limbscan version loads with a logged warning."""
    from limbscan import __version__

    root = Path(path)
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        what = "does not exist" if not root.exists() else f"is not a limbscan bundle (no {MANIFEST})"
        raise LimbscanError(f"{root}: {what}; make one with `limbscan export RUN -o BUNDLE`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInputError(manifest_path, f"not readable JSON ({type(err).__name__})") from err
    if not isinstance(manifest, dict):
        raise BadInputError(manifest_path, "not a bundle manifest (expected a JSON object)")
    fmt = manifest.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise BadInputError(manifest_path, f"no valid 'format' (got {fmt!r})")
    if fmt > BUNDLE_FORMAT:
        raise LimbscanError(
            f"{root}: bundle format {fmt} is newer than this limbscan ({__version__}) reads "
            f"(format {BUNDLE_FORMAT}); upgrade limbscan"
        )
    for key in ("scenarios", "thresholds", "preprocessing", "files", "default_scenario"):
        if key not in manifest:
            raise BadInputError(manifest_path, f"missing the key {key!r}")
    _check_operating_points(manifest, manifest_path)
    made_by = manifest.get("limbscan_version")
    if made_by != __version__:
        log.warning("%s: made by limbscan %s, loaded by %s", root, made_by, __version__)
    if verify:
        for rel, digest in manifest["files"].items():
            _check_file(root, rel, digest)
    return manifest


def _check_operating_points(manifest: dict[str, Any], manifest_path: Path) -> None:
    """A manifest's two operating points agree with its ``thresholds`` and are in order, so
    "likely" and "suspected" mean what they say; an old manifest without them passes."""
    points = manifest.get("operating_points")
    if points is None:
        return
    for name in manifest["scenarios"]:
        try:
            likely = float(points[name][LIKELY]["threshold"])
            suspected = float(points[name][SUSPECTED]["threshold"])
        except (KeyError, TypeError, ValueError):
            raise BadInputError(manifest_path, f"operating_points: no likely and suspected threshold for {name}") from None
        if likely != float(manifest["thresholds"][name]):
            raise BadInputError(manifest_path, f"operating_points: {name}'s likely threshold {likely:g} differs from "
                                               f"its entry in thresholds ({manifest['thresholds'][name]:g})")
        if suspected > likely:
            raise BadInputError(manifest_path, f"operating_points: {name}'s suspected threshold {suspected:g} lies "
                                               f"above its likely one ({likely:g})")


def _check_file(root: Path, rel: str, digest: str) -> None:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise BadInputError(root / MANIFEST, f"lists a file outside the bundle: {rel!r}")
    path = root.joinpath(*parts)
    if not path.is_file():
        raise BadInputError(path, "missing from the bundle (listed in bundle.json)")
    if sha256_file(path) != digest:
        raise BadInputError(path, "sha256 differs from bundle.json: the file was damaged or edited")


# -- writing -------------------------------------------------------------------------------
def export_bundle(
    run: str | Path,
    out: str | Path,
    *,
    target_sensitivity: float | None = None,
    suspected_sensitivity: float = SUSPECTED_SENSITIVITY,
    onnx: bool = False,
    progress: bool = False,
    overwrite: bool = False,
    default_from_cv_dir: str | Path | None = None,
    gate: str | Path | None = BUILTIN_GATE,
    localiser: str = "auto",
) -> Path:
    """Write the bundle of a trained ``run`` into the folder ``out`` (conventionally NAME.limbscan).

    ``gate``: the input gate's pixel check the bundle carries (``gate.npz``): the one limbscan
    ships (``"builtin"``), a file from ``limbscan gate train``, or None for none (then only DICOM
    headers keep images out of scope: for research on other images, or synthetic phantoms).
    ``localiser``: whose boxes a likely or suspected image shows when its scenario draws none
    (:func:`limbscan.localise.choose`; "auto": the best measured one the run has).

    Operating points, on the run's validation scores: "likely" by Youden's J, or the most
    specific point reaching ``target_sensitivity``; "suspected", the most specific point
    reaching ``suspected_sensitivity`` (see :func:`limbscan.operating_points.choose_operating_points`).
    The default scenario: the best held-out AUC on validation, or with ``default_from_cv_dir``
    the best mean AUC across the folds of that ``limbscan cv`` folder (:func:`default_from_cv`).
    The folder is built beside ``out`` and moved into place whole, so
    ``out`` is never half-written; an existing ``out`` is replaced only with ``overwrite``.
    """
    from rich.progress import track

    run, out = Path(run), Path(out)
    check_sensitivity(target_sensitivity, "target_sensitivity")
    check_sensitivity(suspected_sensitivity, "suspected_sensitivity")
    folder = RunDir(run)
    if not run.is_dir():
        raise LimbscanError(f"{run}: not a run folder")
    if out.resolve() == run.resolve():
        raise LimbscanError(f"{out}: the bundle cannot be written over its own run folder")
    if out.exists() and not overwrite:
        raise LimbscanError(f"{out}: already exists; choose another name or pass --overwrite")
    if out.exists() and not (is_bundle(out) or (out.is_dir() and not any(out.iterdir()))):
        # --overwrite replaces a bundle, never an unrelated folder that happens to have the name.
        raise LimbscanError(f"{out}: exists and is not a limbscan bundle; refusing to replace it")
    scenarios = folder.trained()
    if not scenarios:
        raise LimbscanError(f"{run}: no trained scenario here (expected <scenario>/{CHECKPOINT})")
    for name in scenarios:
        for need in info(name).needs:
            if need not in scenarios:
                raise LimbscanError(f"{run}: the {name} needs its {need}, and {folder.best(need)} is missing")
    from limbscan.localise import choose

    localiser_entry = choose(scenarios, localiser)
    val = _val_scores(run, scenarios)
    points = _operating_points(val, scenarios, target_sensitivity, suspected_sensitivity)
    default_cv = None
    if default_from_cv_dir is not None:
        default, reason, default_cv = default_from_cv(default_from_cv_dir, val, scenarios)
    else:
        default, reason = default_from_validation(val, scenarios)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        checkpoints = {}
        for name in track(scenarios, description="export", disable=not progress, transient=True):
            checkpoints[name] = _write_weights(folder.best(name), RunDir(tmp).best(name))
        _write_config(run, checkpoints, RunDir(tmp).config)
        shutil.copyfile(folder.val_scores, RunDir(tmp).val_scores)
        gate_entry = _write_gate(gate, tmp)
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "limbscan_version": _version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "scenarios": scenarios,
            "default_scenario": default,
            "default_reason": reason,
            **({"default_cv": default_cv} if default_cv else {}),
            "thresholds": {name: points[name][LIKELY]["threshold"] for name in scenarios},
            "threshold_rule": rule_name(target_sensitivity),
            "target_sensitivity": target_sensitivity,
            "suspected_sensitivity": float(suspected_sensitivity),
            "operating_points": points,
            **_data_provenance(val),
            "preprocessing": _preprocessing(checkpoints),
            "gate": gate_entry,
            "localiser": localiser_entry,
        }
        if "fused" in checkpoints:
            from limbscan.scenarios.fused import manifest_entry

            manifest["fusion"] = manifest_entry(checkpoints["fused"])
        if onnx:
            manifest["onnx"], manifest["onnx_notes"] = export_onnx(tmp, scenarios)
        manifest["files"] = {
            path.relative_to(tmp).as_posix(): sha256_file(path)
            for path in sorted(tmp.rglob("*")) if path.is_file()
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_gate(gate: str | Path | None, bundle: Path) -> dict[str, Any] | None:
    """Copy the gate into the bundle, checked; what the manifest says of it (None: no gate)."""
    if gate is None:
        return None
    from limbscan.gate.model import GATE_FILE, PixelGate, builtin_gate_path

    source = builtin_gate_path() if str(gate) == BUILTIN_GATE else Path(gate)
    if not source.is_file():
        raise LimbscanError(f"{source}: no input gate there (make one with `limbscan gate train`, or export with "
                            f"--gate none)")
    meta = PixelGate.load(source).meta
    shutil.copyfile(source, bundle / GATE_FILE)
    return {"file": GATE_FILE, "source": BUILTIN_GATE if str(gate) == BUILTIN_GATE else source.name,
            **{k: meta[k] for k in ("backbone", "region_threshold", "distance_threshold", "refuse_target",
                                     "accept_distance_target", "held_out") if k in meta}}


def _version() -> str:
    from limbscan import __version__

    return __version__


def _val_scores(run: Path, scenarios: list[str]) -> dict[str, Any]:
    path = RunDir(run).val_scores
    if not path.is_file():
        raise LimbscanError(
            f"{path}: not found; a bundle's thresholds are chosen on the run's validation scores, which "
            "training writes when it finishes (rerun `limbscan train DS -o RUN --resume` to write them)"
        )
    try:
        val = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BadInputError(path, f"not readable JSON ({type(err).__name__})") from err
    missing = [name for name in scenarios if name not in (val.get("scores") or {})]
    if missing:
        raise BadInputError(path, f"no validation scores for {', '.join(missing)}; rerun training to write them")
    return val


def _operating_points(
    val: dict[str, Any], scenarios: list[str], target_sensitivity: float | None, suspected_sensitivity: float
) -> dict[str, dict[str, Any]]:
    from limbscan.eval.metrics import MetricsInputError

    points = {}
    for name in scenarios:
        try:
            points[name] = choose_operating_points(val["labels"], val["scores"][name],
                                                   target_sensitivity=target_sensitivity,
                                                   suspected_sensitivity=suspected_sensitivity)
        except MetricsInputError as err:
            raise LimbscanError(f"{VAL_SCORES_FILE}, {name}: {err}") from err
        note = points[name][SUSPECTED]["note"]
        if note:
            log.warning("%s, %s: %s", VAL_SCORES_FILE, name, note)
    return points


def _write_weights(src: Path, dst: Path) -> dict[str, Any]:
    from limbscan.models.loading import load_checkpoint
    from limbscan.train.checkpoint import save_checkpoint

    ckpt = load_checkpoint(src)
    kept = {key: ckpt[key] for key in CHECKPOINT_KEYS if key in ckpt}
    save_checkpoint(kept, dst)
    return kept


def _write_config(run: Path, checkpoints: dict[str, dict], dst: Path) -> None:
    if RunDir(run).config.is_file():
        shutil.copyfile(RunDir(run).config, dst)
        return
    # A run trained through the Python API has no config.yaml; every checkpoint holds the config.
    from limbscan.config import config_from_dict, save_config

    last = checkpoints[list(checkpoints)[-1]]
    save_config(config_from_dict(last["config"]), dst)


def _data_provenance(val: dict[str, Any]) -> dict[str, Any]:
    """sha256 of the dataset.json the run was trained on, and the body parts it saw; with
    ``training_data`` every dataset trained on (main and auxiliary), as training recorded it.

    ``data_hash`` is the main dataset.json's as it is now (runs from before ``training_data``
    recorded only the folder); if its val split no longer holds the run's validation images,
    the dataset changed since training and the manifest says so. Each ``training_data`` entry
    says whether its dataset.json still has the hash recorded at training (``now``).
    """
    from limbscan.data.dataset import DATASET_FILE

    found: dict[str, Any] = {"data_hash": None, "body_parts": sorted(val.get("train_body_parts") or [])}
    if val.get("training_data") is not None:
        found["training_data"] = [_now(entry, DATASET_FILE) for entry in val["training_data"]]
    root = val.get("dataset")
    path = Path(root) / DATASET_FILE if root else None
    if path is None or not path.is_file():
        found["data_hash_note"] = "the training dataset.json was not found at export time"
        log.warning("%s", found["data_hash_note"])
        return found
    found["data_hash"] = sha256_file(path)
    try:
        coco = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        found["data_hash_note"] = "dataset.json hashed at export time, but it is not readable JSON"
        return found
    images = coco.get("images") or []
    val_ids = {int(im["id"]) for im in images if im.get("split") == "val"}
    if set(int(i) for i in val.get("image_ids") or []) - val_ids:
        found["data_hash_note"] = "dataset.json changed since training: its val split differs from the run's"
        log.warning("%s: %s", path, found["data_hash_note"])
    else:
        found["data_hash_note"] = "dataset.json hashed at export time; its val split matches the run's"
    if not found["body_parts"]:
        found["body_parts"] = sorted({im.get("body_part") or "unknown" for im in images if im.get("split") == "train"})
    return found


def _now(entry: dict[str, Any], dataset_file: str) -> dict[str, Any]:
    """A training-data entry with ``now``: its dataset.json ``unchanged`` since training, ``changed``
    or ``missing``."""
    path = Path(entry.get("path") or "") / dataset_file
    if not path.is_file():
        now = "missing"
    else:
        now = "unchanged" if sha256_file(path) == entry.get("dataset_sha256") else "changed"
    return {**entry, "now": now}


def _preprocessing(checkpoints: dict[str, dict]) -> dict[str, Any]:
    sides = {name: int(c["config"]["data"]["cache"]["longest_side"]) for name, c in checkpoints.items()}
    if len(set(sides.values())) > 1:
        # Inference resizes each image once, as the cache did; stages cached at different
        # sizes would each need their own copy, which no run made by `limbscan train` has.
        raise LimbscanError(f"the run's scenarios were trained at different cache sizes ({sides}); retrain one")
    from limbscan.scenarios.cascade import rule_of

    first = next(iter(checkpoints.values()))["extra"]
    whole = checkpoints.get("whole-image", {}).get("extra", {})
    cascade = checkpoints.get("cascade", {}).get("extra", {})
    return {
        "cache_side": next(iter(sides.values())),
        "pixel_mean": float(first["pixel_mean"]),
        "pixel_std": float(first["pixel_std"]),
        "whole_image_size": whole.get("input_size"),
        "whole_image_resize": whole.get("image_resize", "letterbox") if whole else None,
        "whole_image_tta_flip": bool(whole.get("tta_flip", False)) if whole else None,
        "crop_size": cascade.get("input_size"),
        "crop_margin": cascade.get("crop_margin"),
        "top_k": cascade.get("top_k"),
        "cascade_score": rule_of(cascade) if cascade else None,
    }


# -- ONNX ----------------------------------------------------------------------------------
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


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    # os.replace cannot put a folder over a non-empty one: move the old aside first, so at
    # every moment `out` is the old bundle or the new one.
    old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
    os.replace(out, old / "bundle")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "bundle", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["BUNDLE_FORMAT", "MANIFEST", "default_scenario", "export_bundle", "is_bundle", "read_manifest"]
