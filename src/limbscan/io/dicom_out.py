"""A prediction back into the source's DICOM study: a Secondary Capture and a Comprehensive SR.

Both are built with highdicom and join the SOURCE study as new series. The SC ("sc") is the
overlay burned in (DERIVED, Source Image Sequence to the radiograph); the SR ("sr", TID 1500, a
DEVICE observer) holds the image-level finding and one region per detection (best 5, a POLYLINE
in the source's pixels). docs/deployment.md lists its codes (three local, under ``99LIMBSCAN``).
With ``uid_seed`` every UID is derived from the seed, so one image and bundle build the same
objects twice; header values in warnings and errors never reach the caller.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from limbscan.errors import BadInputError
from limbscan.io.dicom import read_dataset, redact
from limbscan.io.images import sniff_format
from limbscan.operating_points import LIKELY, NORMAL, SUSPECTED, level_of
from limbscan.utils.files import atomic_file

KINDS = ("sc", "sr")
MAX_REGIONS = 5
MANUFACTURER = "limbscan"
SC_SERIES_DESCRIPTION = "limbscan overlay"
SR_SERIES_DESCRIPTION = "limbscan report"
# High numbers keep the derived series after the acquired ones in a viewer's series list.
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902

NORMALITY = codes.DCM.Normality
ABNORMAL = codes.SCT.Abnormal
NORMAL_CODE = codes.SCT.Normal
IMAGING_FINDING = codes.SCT.ImagingFinding
LESION = codes.SCT.Lesion
PROBABILITY = codes.DCM.Probability
THRESHOLD = codes.DCM.ThresholdValue
PROBABILITY_UNIT = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
PROCEDURE = codes.SCT.PlainRadiography
LOCAL_SCHEME = "99LIMBSCAN"
LOCAL_SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=LOCAL_SCHEME, name="limbscan local codes", responsible_organization=MANUFACTURER
)
SUSPECTED_THRESHOLD = hd.sr.CodedConcept("SUSP-THRESHOLD", LOCAL_SCHEME, "High-sensitivity threshold value")
LEVEL = hd.sr.CodedConcept("LEVEL", LOCAL_SCHEME, "limbscan finding level")
LEVEL_CODES = {
    LIKELY: hd.sr.CodedConcept("LIKELY", LOCAL_SCHEME, "Likely abnormal"),
    SUSPECTED: hd.sr.CodedConcept("SUSPECTED", LOCAL_SCHEME, "Suspected abnormal"),
    NORMAL: hd.sr.CodedConcept("NORMAL", LOCAL_SCHEME, "Below both operating points"),
}
# limbscan body part -> PS3.16 Annex L (CID 4031) code of the matching BodyPartExamined term.
BODY_PART_CODES = {
    "toe": codes.SCT.Toe,
    "foot": codes.SCT.Foot,
    "ankle": codes.SCT.AnkleJoint,
    "leg": codes.SCT.LowerLeg,
    "knee": codes.SCT.Knee,
    "femur": codes.SCT.Femur,
    "hip": codes.SCT.Hip,
}

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Series-level attributes of the source that still describe the derived series.
_SERIES_KEPT = ("BodyPartExamined", "Laterality")
# Type 2 attributes highdicom reads from the source without a default: absent means empty.
_TYPE2_READ = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def dicom_outputs(
    source: Path,
    prediction: Mapping[str, Any],
    overlay_rgb: np.ndarray,
    manifest: Mapping[str, Any],
    out_dir: Path,
    kinds: Sequence[str] = KINDS,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write the Secondary Capture and/or Comprehensive SR for one DICOM ``source``.

    ``prediction`` is ``Prediction.to_json()`` for that file, ``overlay_rgb`` the rendered
    overlay (H x W x 3 uint8), ``manifest`` the bundle's ``bundle.json``. Files are named
    ``<SOPInstanceUID>.dcm`` and written atomically into ``out_dir``; their paths come back
    in the order of ``kinds``. A source that is not a usable DICOM image is a
    :class:`BadInputError` naming it. ``uid_seed``: derive every UID from it (see the module
    docstring) instead of drawing them at random.
    """
    source, out_dir = Path(source), Path(out_dir)
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"unknown DICOM output kind(s) {unknown}; choose from {list(KINDS)}")
    header = source_header(source)
    _check_prediction(prediction, header)
    if "sc" in kinds:
        _check_overlay(overlay_rgb)
    # Everything is built before anything is written: a header highdicom refuses leaves no
    # half set of outputs behind.
    built = []
    for kind in kinds:
        with _quiet():
            try:
                if kind == "sc":
                    ds = secondary_capture(header, overlay_rgb, manifest, uid_seed=uid_seed)
                else:
                    ds = structured_report(header, prediction, manifest, uid_seed=uid_seed)
            except (ValueError, TypeError, KeyError, AttributeError) as err:
                problem = redact(f"{type(err).__name__}: {err}", header)
                raise BadInputError(
                    source, f"cannot build the DICOM {kind.upper()} from this header ({problem})"
                ) from None
        built.append(ds)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_write_atomic(ds, out_dir / f"{ds.SOPInstanceUID}.dcm") for ds in built]


def source_header(source: Path) -> Dataset:
    """The source's header (no pixels), checked to be an image a study can be filed under."""
    fmt = sniff_format(source)
    if fmt != "dicom":
        kind = fmt.upper() if fmt else "not a recognised image"
        raise BadInputError(source, f"DICOM outputs need a DICOM source; this file is {kind}")
    with _quiet():
        ds = read_dataset(source)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise BadInputError(source, "DICOM file has no pixel data: there is no image to annotate")
    missing = [kw for kw in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID") if not ds.get(kw)]
    if missing:
        raise BadInputError(source, f"DICOM file has no {', '.join(missing)}: outputs cannot reference it")
    if UID(str(ds.SOPClassUID)).type != "SOP Class":
        # highdicom looks the source's IOD up by its class to copy the Patient and Study modules.
        raise BadInputError(
            source, "DICOM file's SOP Class UID is not a standard DICOM class: outputs cannot be derived"
        )
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            del ds[keyword]
    for keyword in _TYPE2_READ:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def secondary_capture(header: Dataset, overlay_rgb: np.ndarray, manifest: Mapping[str, Any],
                      uid_seed: str | None = None) -> hd.sc.SCImage:
    """The overlay as a Secondary Capture in the source's study (a new series)."""
    _check_overlay(overlay_rgb)
    uid = _uids(uid_seed, "sc")
    version = str(manifest.get("limbscan_version", "unknown"))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uid("series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uid("instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        # Placeholder only: highdicom checks single-letter directions, while the source's
        # own value (composite like "AL", or empty when unknown) is what applies.
        patient_orientation=("A", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
        manufacturer_model_name=MANUFACTURER,
        software_versions=version,
    )
    # from_ref_dataset copies a few patient fields; the whole Patient and Study modules
    # (e.g. Patient Identity Removed, Study Description) keep the SC consistent with the SR.
    sc.copy_patient_and_study_information(header)
    sc.PatientOrientation = header.get("PatientOrientation") or None
    for keyword in _SERIES_KEPT:
        if keyword in header:
            sc[keyword] = header[keyword]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"limbscan {version} overlay: detections and caption burned in"[:1024]
    sc.SourceImageSequence = [_image_reference(header)]
    return sc


def structured_report(
    header: Dataset, prediction: Mapping[str, Any], manifest: Mapping[str, Any], uid_seed: str | None = None
) -> hd.sr.ComprehensiveSR:
    """A TID 1500 report of ``prediction`` on the source image (see the module docstring)."""
    uid = _uids(uid_seed, "sr")
    version = str(manifest.get("limbscan_version", "unknown"))
    scenario = str(prediction["scenario"])
    algorithm = hd.sr.AlgorithmIdentification(
        name="limbscan",
        version=version,
        manufacturer=MANUFACTURER,
        parameters=_algorithm_parameters(prediction, manifest),
    )
    sites = _finding_sites(prediction.get("body_part"))
    measurements = [_probability(PROBABILITY, prediction["probability"]),
                    _probability(THRESHOLD, prediction["threshold"])]
    if prediction.get("suspected_threshold") is not None:
        measurements.append(_probability(SUSPECTED_THRESHOLD, prediction["suspected_threshold"]))
    finding = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid("finding"), identifier="limbscan image finding"),
        finding_type=IMAGING_FINDING,
        algorithm_id=algorithm,
        finding_sites=sites,
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(NORMALITY, ABNORMAL if prediction["label"] == "abnormal" else NORMAL_CODE),
            hd.sr.QualitativeEvaluation(LEVEL, LEVEL_CODES[_level(prediction)]),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup(str(header.SOPClassUID), str(header.SOPInstanceUID))],
    )
    groups: list[Any] = [finding]
    for rank, det in enumerate(_best_detections(prediction), start=1):
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uid(f"detection {rank}"),
                    identifier=f"limbscan detection {rank} ({prediction.get('boxes_from') or scenario})"
                ),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=box_polyline(det["box"]),
                    source_image=hd.sr.SourceImageForRegion(str(header.SOPClassUID), str(header.SOPInstanceUID)),
                ),
                finding_type=LESION,
                algorithm_id=algorithm,
                finding_sites=sites,
                measurements=[_probability(PROBABILITY, det["score"])],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=device_uid(version),
                    name="limbscan",
                    manufacturer_name=MANUFACTURER,
                    model_name=f"limbscan {version}",
                ),
            )
        ),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    return hd.sr.ComprehensiveSR(
        evidence=[header],
        content=report[0],
        series_instance_uid=uid("series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uid("instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        # Complete (nothing left to add) but not verified: no person has signed it off.
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=MANUFACTURER,
        software_versions=version,
        coding_schemes=[LOCAL_SCHEME_ITEM],
    )


def box_polyline(box: Sequence[float]) -> np.ndarray:
    """``[x0, y0, x1, y1]`` as a closed POLYLINE of (column, row) points, clockwise from top left.

    Box and SCOORD share one convention (0, 0 is the top-left corner of the top-left pixel),
    so the corners carry over unchanged.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def device_uid(version: str) -> str:
    """One Device Observer UID per limbscan version, the same on every machine and run."""
    return generate_uid(entropy_srcs=["limbscan device observer", version])


def _uids(seed: str | None, kind: str):
    """``uid(name)``: a fresh random UID, or with a seed the one UID that seed, kind and name give."""
    if seed is None:
        return lambda name: generate_uid()
    return lambda name: generate_uid(entropy_srcs=["limbscan output", seed, kind, name])


def _algorithm_parameters(prediction: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[str]:
    params = [f"scenario={prediction['scenario']}"]
    if prediction.get("boxes_from") and prediction.get("detections"):
        params.append(f"boxes_from={prediction['boxes_from']}")
    for key in ("threshold_rule", "suspected_sensitivity", "created", "data_hash"):
        if manifest.get(key):
            params.append(f"bundle {key}={manifest[key]}")
    return params


def _probability(name: Any, value: object) -> hd.sr.Measurement:
    # The group's Algorithm Identification covers its measurements; no copy per value.
    return hd.sr.Measurement(name=name, value=float(value), unit=PROBABILITY_UNIT)


def _level(prediction: Mapping[str, Any]) -> str:
    """The level the prediction's probability reaches against its two thresholds."""
    return level_of(float(prediction["probability"]), float(prediction["threshold"]),
                    prediction.get("suspected_threshold"))


def _finding_sites(body_part: object) -> list[hd.sr.FindingSite] | None:
    code = BODY_PART_CODES.get(str(body_part)) if body_part else None
    return [hd.sr.FindingSite(anatomic_location=code)] if code is not None else None


def _best_detections(prediction: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    detections = sorted(prediction.get("detections") or [], key=lambda d: -float(d["score"]))
    return detections[:MAX_REGIONS]


def _check_prediction(prediction: Mapping[str, Any], header: Dataset) -> None:
    """The prediction must be of this image: its boxes are written in this image's pixels."""
    missing = [key for key in ("scenario", "probability", "threshold", "label") if key not in prediction]
    if missing:
        raise ValueError(f"prediction lacks {missing}")
    size = (prediction.get("width"), prediction.get("height"))
    if "level" in prediction and prediction["level"] != _level(prediction):
        raise ValueError(f"prediction's level {prediction['level']!r} disagrees with its probability and thresholds "
                         f"({_level(prediction)!r})")
    if size != (None, None) and size != (int(header.Columns), int(header.Rows)):
        raise ValueError(f"prediction is for a {size[0]}x{size[1]} image, the DICOM is {header.Columns}x{header.Rows}")
    for det in prediction.get("detections") or []:
        if len(det.get("box", ())) != 4 or "score" not in det:
            raise ValueError(f"detection needs a 4-number box and a score, got keys {sorted(det)}")


def _check_overlay(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise ValueError(f"overlay must be an H x W x 3 uint8 array, got {getattr(rgb, 'dtype', type(rgb))} {shape}")


def _image_reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item


def _write_atomic(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file: a temporary file beside ``path``, then a rename."""
    with atomic_file(path, "wb", permissions=None) as f:
        pydicom.dcmwrite(f, ds, enforce_file_format=True)
    return path


@contextmanager
def _quiet() -> Iterator[None]:
    """Hold back highdicom's and pydicom's warnings and log records: they quote header values."""
    mute = _Mute()
    # A logger's filter sees only records logged on it, not those its children pass up, so
    # every highdicom module logger gets one.
    loggers = [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and name.split(".")[0] in ("highdicom", "pydicom")
    ]
    for logger in loggers:
        logger.addFilter(mute)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(mute)


class _Mute(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False
