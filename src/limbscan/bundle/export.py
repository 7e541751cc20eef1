"""Writing a bundle: a trained run as one self-checking folder (``limbscan export RUN -o NAME.limbscan``).

A bundle mirrors a run folder (so whatever scores a run scores a bundle) and adds ``bundle.json``:
sha256 of every file, both operating points per scenario and the default scenario, chosen here once
on the run's validation scores; the input gate, the localiser, optional ONNX files and model card.
The layout is in docs/deployment.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from limbscan.bundle.default import default_from_cv, default_from_validation
from limbscan.bundle.manifest import BUNDLE_FORMAT, MANIFEST, file_hashes, is_bundle
from limbscan.bundle.onnx import export_onnx
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
from limbscan.scenarios import info
from limbscan.utils.files import sha256_file

log = logging.getLogger(__name__)

BUILTIN_GATE = "builtin"  # export's default gate: the one limbscan ships (limbscan/gate/gate.npz)
CHECKPOINT = BEST  # a bundle keeps each scenario's best checkpoint, under the run's name for it
# What a bundle's checkpoint keeps: what load_classifier / load_detector read, and the epoch
# and AUC it was chosen at. Optimizer, scheduler, scaler, RNG state and history stay behind.
CHECKPOINT_KEYS = ("format", "stage", "epoch", "epochs", "model", "config", "extra", "best_auc", "best_epoch")


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
    scenarios: Sequence[str] | None = None,
    half: bool = False,
    model_card: str | Path | None = None,
) -> Path:
    """Write the bundle of a trained ``run`` into the folder ``out`` (conventionally NAME.limbscan).

    Operating points on the run's validation scores ("likely": Youden's J or ``target_sensitivity``;
    "suspected": ``suspected_sensitivity``); the default scenario by validation AUC, or by the fold
    means of ``default_from_cv_dir``. ``gate``: "builtin", a gate.npz, or None; ``localiser``: see
    :func:`limbscan.localise.choose`; ``scenarios``: a subset; ``half``: :func:`_halved` weights;
    ``model_card``: a markdown file to carry. Built beside ``out`` and moved into place whole;
    an existing ``out`` is replaced only with ``overwrite``. docs/deployment.md says more.
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
    trained = folder.trained()
    if not trained:
        raise LimbscanError(f"{run}: no trained scenario here (expected <scenario>/{CHECKPOINT})")
    missing = [name for name in scenarios or () if name not in trained]
    if missing:
        raise LimbscanError(f"{run}: {', '.join(missing)} not trained here (it has: {', '.join(trained)})")
    scenarios = [name for name in trained if scenarios is None or name in scenarios]
    for name in scenarios:
        for need in info(name).needs:
            if need not in scenarios:
                raise LimbscanError(f"{run}: the {name} needs its {need}, and {folder.best(need)} is not included"
                                    + (" (add it to --scenario)" if need in trained else " (it is not trained)"))
    if model_card is not None and not Path(model_card).is_file():
        raise LimbscanError(f"{model_card}: no model card there")
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
            # A fitted scenario's few weights (fused) stay float32: halving them saves nothing.
            checkpoints[name] = _write_weights(folder.best(name), RunDir(tmp).best(name),
                                               half and not info(name).fitted_on_validation)
        _write_config(run, checkpoints, RunDir(tmp).config)
        shutil.copyfile(folder.val_scores, RunDir(tmp).val_scores)
        gate_entry = _write_gate(gate, tmp)
        if model_card is not None:
            shutil.copyfile(model_card, tmp / MODEL_CARD)
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
            "weights_dtype": "float16" if half else "float32",
            "model_card": MODEL_CARD if model_card is not None else None,
        }
        if "fused" in checkpoints:
            from limbscan.scenarios.fused import manifest_entry

            manifest["fusion"] = manifest_entry(checkpoints["fused"])
        if onnx:
            manifest["onnx"], manifest["onnx_notes"] = export_onnx(tmp, scenarios)
        manifest["files"] = file_hashes(tmp)
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


MODEL_CARD = "model-card.md"
# Half precision everywhere moved the whole-image model's probabilities by up to 0.008 on the
# examples; kept float32, the vectors (biases, norms) and the first quarter of the tensors (the
# stem and early blocks, few weights whose rounding every later layer carries) bring it within 1e-3.
HALF_AFTER = 0.25


def _halved(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the matrices and kernels past the first :data:`HALF_AFTER` of the tensors in float16."""
    floating = [k for k, v in state.items() if v.is_floating_point()]
    early = set(floating[: int(len(floating) * HALF_AFTER)])
    return {k: v.half() if v.is_floating_point() and v.ndim >= 2 and k not in early else v for k, v in state.items()}



def _write_weights(src: Path, dst: Path, half: bool = False) -> dict[str, Any]:
    from limbscan.models.loading import load_checkpoint
    from limbscan.train.checkpoint import save_checkpoint

    ckpt = load_checkpoint(src)
    kept = {key: ckpt[key] for key in CHECKPOINT_KEYS if key in ckpt}
    if half:
        kept["model"] = _halved(kept["model"])
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
    from limbscan.scenarios.base import recorded
    from limbscan.scenarios.cascade import rule_of

    first = next(iter(checkpoints.values()))["extra"]
    whole = checkpoints.get("whole-image", {}).get("extra", {})
    cascade = checkpoints.get("cascade", {}).get("extra", {})
    return {
        "cache_side": next(iter(sides.values())),
        "pixel_mean": float(first["pixel_mean"]),
        "pixel_std": float(first["pixel_std"]),
        "whole_image_size": whole.get("input_size"),
        "whole_image_resize": recorded(whole, "image_resize", "whole-image") if whole else None,
        "whole_image_tta_flip": bool(recorded(whole, "tta_flip", "whole-image")) if whole else None,
        "crop_size": cascade.get("input_size"),
        "crop_margin": cascade.get("crop_margin"),
        "top_k": cascade.get("top_k"),
        "cascade_score": rule_of(cascade) if cascade else None,
    }


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
