"""The one per-image path that ``predict``, ``serve`` and ``listen`` share.

:meth:`Analyser.read` turns one file into pixels, metadata and study key (or a refusal naming it);
:meth:`Analyser.analyse` asks the input gate, scores what is in scope and gives one
:class:`Analysis` per image (record, prediction, overlay); :meth:`Analyser.write` writes its
overlay and DICOM outputs. The callers differ only in :class:`AnalyseOptions`. An out-of-scope
image gets a record (level "out_of_scope", the reason) and nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from limbscan.errors import BadInputError, LimbscanError
from limbscan.io.meta import ImageMeta

if TYPE_CHECKING:
    from limbscan.inference import Prediction, Predictor

DICOM_KINDS = ("sc", "sr")
# How files that are not DICOM are grouped into studies (DICOM always uses its StudyInstanceUID).
STUDY_KEYS = ("file", "folder")


@dataclass(frozen=True)
class AnalyseOptions:
    scenario: str | None = None  # None: the bundle's default
    gate: bool = True  # False: score every image as given (research use)
    overlay: bool = True
    gradcam: bool = False  # a Grad-CAM heatmap on the overlay (classifier scenarios)
    dicom_out: tuple[str, ...] = ()  # for DICOM inputs: "sc" and / or "sr"
    study_key: str = "file"  # non-DICOM files: each its own study, or one study per folder


@dataclass
class Read:
    """One input, read: where it is, how records name it, its pixels, metadata and study."""

    source: Path
    name: str  # the record's "file"; "" for uploads, whose record says null: a client's name is never echoed
    pixels: np.ndarray
    meta: ImageMeta
    study: str | None


@dataclass
class Analysis:
    read: Read
    prediction: Prediction
    record: dict[str, Any]
    rgb: np.ndarray | None = None  # the overlay, for in-scope images when overlays or DICOM outputs are asked
    warnings: list[str] = field(default_factory=list)


def refusal(name: str | None, err: Exception) -> BadInputError:
    """Any failure as a BadInputError; only the type of a foreign one (its message could quote a header)."""
    if isinstance(err, BadInputError):
        return err
    return BadInputError(name or "upload", f"could not score the image ({type(err).__name__})")


class Analyser:
    """The path from file to record for one loaded model and one set of options."""

    def __init__(self, model: Predictor, options: AnalyseOptions = AnalyseOptions(),
                 decode_lock: threading.Lock | None = None):
        from limbscan.scenarios import classifier_scenarios

        self.model, self.options = model, options
        self.scenario = options.scenario or model.default_scenario
        if self.scenario not in model.scenarios:
            raise LimbscanError(f"{model.path}: no scenario {self.scenario!r} in this bundle "
                                f"(it has {', '.join(model.scenarios)})")
        unknown = [k for k in options.dicom_out if k not in DICOM_KINDS]
        if unknown:
            raise LimbscanError(f"--dicom-out {','.join(unknown)}: use {' and / or '.join(DICOM_KINDS)}")
        if options.study_key not in STUDY_KEYS:
            raise LimbscanError(f"--studies {options.study_key}: use {' or '.join(STUDY_KEYS)}")
        if options.gradcam and not options.overlay:
            raise LimbscanError("Grad-CAM is drawn on the overlays: drop --no-overlays or --gradcam")
        if options.gradcam and self.scenario not in classifier_scenarios():
            raise LimbscanError(f"Grad-CAM needs a classifier: scenario {self.scenario!r} has none (use --scenario "
                                f"{' or '.join(classifier_scenarios())} where the bundle has them)")
        # pydicom's warnings are collected process-wide (io.dicom): decodes in threads take turns.
        self.decode_lock = decode_lock or nullcontext()

    # -- reading ----------------------------------------------------------------------------
    def read(self, path: str | Path, name: str | None = None) -> Read | BadInputError:
        """Read one file; ``name`` is what its record calls it (default: the path as given; "": null)."""
        from limbscan.io import read_image

        path = Path(path)
        name = str(path) if name is None else name
        try:
            with self.decode_lock:
                pixels, meta = read_image(path)
                study = self._study(path, meta)
        except Exception as err:  # noqa: BLE001 - one odd file must not end a batch
            if isinstance(err, BadInputError):
                return err
            return BadInputError(path, f"could not decode the image ({type(err).__name__})")
        return Read(path, name, pixels, meta, study)

    def _study(self, path: Path, meta: ImageMeta) -> str | None:
        if meta.format == "dicom":
            from limbscan.io.dicom import study_uid

            uid = study_uid(path)
            if uid:
                return uid
        return str(path.parent) if self.options.study_key == "folder" else None

    # -- scoring ----------------------------------------------------------------------------
    def analyse(self, reads: Sequence[Read]) -> list[Analysis | BadInputError]:
        """Gate and score a batch of reads; one failing image fails alone."""
        if not reads:
            return []
        preds = self.model.predict_read([(r.pixels, r.meta) for r in reads], scenario=self.scenario,
                                        masks=True, gate=self.options.gate)
        out: list[Analysis | BadInputError] = []
        for read, pred in zip(reads, preds, strict=True):
            if isinstance(pred, BadInputError):
                out.append(BadInputError(read.name or "upload", pred.problem))
                continue
            try:
                out.append(self._finish(read, pred))
            except (OSError, LimbscanError):
                raise  # a full disk or a broken bundle fails every image alike: stop
            except Exception as err:  # noqa: BLE001
                out.append(refusal(read.name, err))
        return out

    def one(self, path: str | Path, name: str | None = None) -> Analysis:
        """Read and analyse one file; raises the BadInputError that refuses it."""
        read = self.read(path, name)
        if isinstance(read, BadInputError):
            raise read
        [result] = self.analyse([read])
        if isinstance(result, BadInputError):
            raise result
        return result

    def _finish(self, read: Read, pred: Prediction) -> Analysis:
        from limbscan.overlay import render_overlay

        pred.file = read.name or None  # the body part came with read.meta through predict_read
        record = pred.to_json()
        record["study"] = read.study
        analysis = Analysis(read, pred, record, warnings=list(read.meta.warnings))
        want_dicom = bool(self.options.dicom_out) and read.meta.format == "dicom"
        if pred.in_scope and (self.options.overlay or want_dicom):
            heat = None
            if self.options.gradcam:
                from limbscan.explain import gradcam

                try:
                    heat = gradcam(self.model, read.pixels, pred)
                except Exception as err:  # noqa: BLE001 - the overlay is still worth drawing without it
                    analysis.warnings.append(f"Grad-CAM failed ({type(err).__name__})")
            analysis.rgb = render_overlay(read.pixels, pred, heat)
        return analysis

    # -- writing ----------------------------------------------------------------------------
    def write(self, analysis: Analysis, *, overlay: Path | None, overlay_ref: str | None = None,
              dicom_dir: Path | None = None, dicom_ref=None, uid_seed: str | None = None) -> list[Path]:
        """Write the overlay to ``overlay`` (its record entry ``overlay_ref``) and the DICOM outputs
        into ``dicom_dir`` (``dicom_ref(path)`` names each in the record); the DICOM files written."""
        from limbscan.overlay import save_png

        record, written = analysis.record, []
        if analysis.rgb is not None and overlay is not None and self.options.overlay:
            save_png(analysis.rgb, overlay)
            record["overlay"] = overlay_ref or str(overlay)
        if analysis.rgb is not None and dicom_dir is not None and self.options.dicom_out \
                and analysis.read.meta.format == "dicom":
            from limbscan.io.dicom_out import dicom_outputs  # pulls highdicom in only when asked

            try:
                with self.decode_lock:
                    written = dicom_outputs(analysis.read.source, record, analysis.rgb, self.model.manifest,
                                            dicom_dir, self.options.dicom_out, uid_seed=uid_seed)
                record["dicom"] = [dicom_ref(p) if dicom_ref else str(p) for p in written]
            except BadInputError as err:  # the score stands; only the objects to send are missing
                analysis.warnings.append(f"DICOM output failed: {err.problem}")
            except OSError:
                raise
            except Exception as err:  # noqa: BLE001 - only the type: a message could quote the header
                analysis.warnings.append(f"DICOM output failed ({type(err).__name__})")
        if analysis.warnings:
            record["warnings"] = [w.replace(str(analysis.read.source), analysis.read.name or "upload")
                                  for w in analysis.warnings]
        return written


__all__ = ["DICOM_KINDS", "STUDY_KEYS", "AnalyseOptions", "Analyser", "Analysis", "Read", "refusal"]
