"""DICOM radiographs to display-ready grey pixels, through pydicom.

The pixel pipeline is the standard's own order (PS3.4 N.2): decode (any transfer syntax a
pydicom plugin handles) -> Modality LUT (rescale) -> VOI LUT or window -> invert MONOCHROME1 so
bone is bright. Where a file carries no VOI, the modality values are stretched min to max.

Patient data never leaves this module: messages are built here, and text that pydicom
produces (warnings, exceptions) is stripped of every value the file holds before use.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing, pixel_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)

from limbscan.errors import BadInputError
from limbscan.io.bodypart import body_region, normalize_body_part
from limbscan.io.meta import ImageMeta

# Where BodyPartExamined is missing or vague ("EXTREMITY"), these say what was imaged.
BODY_PART_SOURCES = ("BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName")

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_TRAILING_PADDING = 0xFFFCFFFC
_UNDEFINED = 0xFFFFFFFF  # an element length meaning "until its delimiter"
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's convert("L") uses
_DEFINED_TERM = re.compile(r"[A-Z0-9_ ]*")  # what a valid CS value looks like
# Value representations whose text may identify a patient, study or institution.
_TEXT_VRS = {"AE", "AS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT", "UR"}


def read_dicom(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a DICOM file: float32 H x W in [0, 1] (bone bright) and its :class:`ImageMeta`."""
    path = Path(path)
    with pydicom_messages() as said:
        ds = read_dataset(path)
        problem = truncation(ds, [str(w.message) for w in said])
        if problem:
            raise BadInputError(path, problem)
        try:
            pixels, notes = dicom_pixels(ds)
            meta = dicom_meta(ds)
        except _PixelError as err:
            raise BadInputError(path, redact(str(err), ds)) from None
        except Exception as err:  # noqa: BLE001 - a header value that is not what its VR says
            problem = f"unusable DICOM header value ({type(err).__name__}: {redact(str(err), ds)})"
            raise BadInputError(path, problem) from None
    meta.warnings.extend(notes)
    meta.warnings.extend(
        f"pydicom: {redact(str(w.message), ds)}" for w in said if not issubclass(w.category, DeprecationWarning)
    )
    return pixels, meta


@contextmanager
def pydicom_messages() -> Iterator[list[warnings.WarningMessage]]:
    """Hold back what pydicom says while the block runs, and hand it over as a list.

    pydicom both warns and logs about odd header values, quoting them, and a quoted value
    may be a patient's name: its log records are dropped here (the same text arrives as a
    warning) and its warnings collected, for the caller to :func:`redact` before use.
    """
    logger = logging.getLogger("pydicom")
    mute = _Mute()
    logger.addFilter(mute)
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            yield said
    finally:
        logger.removeFilter(mute)


def truncation(ds: Dataset, read_warnings: Sequence[str] = ()) -> str | None:
    """Why ``ds`` (as just read) looks cut short, or ``None``.

    pydicom reads what is there without complaint: an element it could not read in full
    keeps its declared length beside fewer bytes, and a cut inside encapsulated pixel data
    leaves only an "End of file reached" warning.
    """
    if any("End of file reached" in w for w in read_warnings):
        # pydicom then drops the whole data set it was reading.
        return "truncated DICOM: the file ends inside the encapsulated pixel data or a sequence"
    if len(ds) == 0:
        return "truncated DICOM: the file ends in or just after its meta header"
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if tag == _TRAILING_PADDING or not isinstance(raw, RawDataElement):
            continue  # padding after the pixels carries nothing
        if raw.value is not None and raw.length != _UNDEFINED and len(raw.value) < raw.length:
            name = pydicom.datadict.dictionary_description(tag) if tag in pydicom.datadict.DicomDictionary else str(tag)
            return f"truncated DICOM: the file ends inside {name} ({len(raw.value)} of {raw.length} bytes)"
    return None


def dicom_pixels(ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """Pixels of the first frame as float32 in [0, 1], bone bright, and notes for the caller.

    Raises ``_PixelError`` (a ``ValueError``) with a message free of patient data.
    """
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        sop = _uid_name(ds.get("SOPClassUID"))
        if sop and "Image Storage" in sop:
            raise _PixelError(f"DICOM file has no pixel data although it is a {sop} (truncated or stripped)")
        raise _PixelError(f"DICOM file has no pixel data{f' (it is a {sop})' if sop else ''}")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows == 0 or cols == 0:
        raise _PixelError(f"image has zero size ({rows}x{cols})")

    notes: list[str] = []
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        notes.append(f"multi-frame DICOM ({frames} frames): only the first frame is used")
    ts = _transfer_syntax(ds)
    _check_decodable(ts)
    try:
        # index=0 decodes one frame only; YBR colour comes back as RGB.
        arr = pixel_array(ds, index=0)
    except Exception as err:  # noqa: BLE001 - any decoder failure is this file's problem
        raise _PixelError(f"cannot decode the pixel data ({ts.name}): {err}") from None
    if arr.shape[:2] != (rows, cols):
        raise _PixelError(f"decoded pixels are {arr.shape[:2]}, the header says {rows}x{cols}")

    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        grey = rgb[..., :3] @ _LUMA / np.iinfo(rgb.dtype).max
    elif arr.ndim == 3:
        # RGB, or YBR already converted by pixel_array; no LUTs apply to colour.
        bits = int(ds.get("BitsStored") or 8)
        grey = arr[..., :3] @ _LUMA / (2**bits - 1)
    else:
        grey, note = grey_levels(arr, ds)
        notes.extend(note)
        if photometric == "MONOCHROME1":
            grey = 1.0 - grey
    out = np.clip(np.nan_to_num(grey, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return out.astype(np.float32), notes


def grey_levels(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """Stored greyscale values -> [0, 1] through the Modality LUT then the VOI LUT or window.

    Output 0 is the VOI's lowest output (black for MONOCHROME2). Without any VOI the
    modality values are stretched min to max.
    """
    values = apply_modality_lut(arr, ds)
    voi = ds.get("VOILUTSequence")
    item = voi[0] if voi else None
    if item is not None and "LUTDescriptor" in item and "LUTData" in item:
        if not np.issubdtype(values.dtype, np.integer) and np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)  # a LUT indexes by integers
        entries, first, _ = (int(v) for v in item.LUTDescriptor)
        # The LUT's output range (its smallest to largest entry) spans black to white; the
        # nominal bit depth in the descriptor is often wrong, so it is not used.
        table = apply_voi_lut(np.arange(first, first + (entries or 2**16)), ds, index=0)
        return _rescale(apply_voi_lut(values, ds, index=0), table.min(), table.max()), []
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            with np.errstate(over="ignore"):  # SIGMOID at the probe's extremes
                # pydicom maps a window onto a range derived from BitsStored and the
                # rescale; far-out probes give that range's two ends.
                ends = apply_windowing(np.array([-1e15, 1e15]), ds, index=0)
                return _rescale(apply_windowing(values, ds, index=0), ends.min(), ends.max()), []
        except (ValueError, TypeError, AttributeError, IndexError):
            note = "window centre/width unusable: grey levels stretched min to max instead"
            return _minmax(values), [note]
    return _minmax(values), []


def dicom_meta(ds: Dataset) -> ImageMeta:
    """What limbscan keeps from the header: size, spacing, body part; never patient data."""
    return ImageMeta(
        width=int(ds.get("Columns") or 0),
        height=int(ds.get("Rows") or 0),
        format="dicom",
        pixel_spacing=pixel_spacing(ds),
        body_part=dicom_body_part(ds),
        bits_stored=int(ds.BitsStored) if ds.get("BitsStored") is not None else None,
        photometric=str(ds.get("PhotometricInterpretation", "")) or None,
        modality=str(ds.get("Modality", "")) or None,
        header_region=dicom_header_region(ds),
    )


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) mm per pixel: PixelSpacing, else ImagerPixelSpacing; zeros mean unknown."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
            return row, col
    return None


def dicom_body_part(ds: Dataset) -> str | None:
    """One of LOWER_LIMB_PARTS from the first of :data:`BODY_PART_SOURCES` that names one."""
    for keyword in BODY_PART_SOURCES:
        part = normalize_body_part(str(ds.get(keyword) or ""))
        if part is not None:
            return part
    return None


def dicom_header_region(ds: Dataset) -> tuple[str, str, str] | None:
    """(keyword, body part, words) from the first of :data:`BODY_PART_SOURCES` that names a body
    part, lower limb or not; the words are the table's own, never the field's other text."""
    for keyword in BODY_PART_SOURCES:
        found = body_region(str(ds.get(keyword) or ""))
        if found is not None:
            return keyword, *found
    return None


def redact(text: str, ds: Dataset) -> str:
    """``text`` with every identifying value of ``ds`` (names, ids, dates, UIDs...) masked.

    Well-known UIDs (transfer syntaxes, SOP classes) are kept: they name formats, not people.
    """
    values: set[str] = set()

    def collect(dataset: Dataset, elem: pydicom.DataElement) -> None:
        if elem.VR not in _TEXT_VRS and elem.VR != "CS" or elem.value is None:
            return
        items = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value]
        for item in map(str, items):
            # A valid CS is a defined term (MONOCHROME1, AP): only an invalid one can be free text.
            if elem.VR != "CS" or not _DEFINED_TERM.fullmatch(item.strip()):
                values.add(item.strip())

    try:
        ds.walk(collect)
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.walk(collect)
    except Exception:  # noqa: BLE001 - a broken header must not stop the masking
        return "details withheld (could not check them for patient data)"
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 2 and value not in UID_dictionary:
            text = text.replace(value, "<redacted>")
    return text


class _Mute(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


class _PixelError(ValueError):
    """A pixel problem; the message is checked for patient data by the caller."""


def read_dataset(path: str | Path) -> Dataset:
    """``pydicom.dcmread`` with every failure a :class:`BadInputError` free of patient data."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError as err:
        raise BadInputError(path, f"cannot read the file ({err.strerror or type(err).__name__})") from None
    has_preamble = head[128:132] == b"DICM"
    try:
        # force only for the old preamble-less files that sniff_format let through.
        return pydicom.dcmread(path, force=not has_preamble)
    except InvalidDicomError:
        raise BadInputError(path, "not a valid DICOM file") from None
    except (EOFError, OSError) as err:
        raise BadInputError(path, f"truncated or unreadable DICOM ({type(err).__name__})") from None
    except Exception as err:  # noqa: BLE001 - pydicom's parse errors have many types
        # The message may quote a header value: give only its kind.
        raise BadInputError(path, f"corrupt DICOM header ({type(err).__name__})") from None


def study_uid(path: str | Path) -> str | None:
    """The file's StudyInstanceUID (the header alone is parsed), or None where it has none."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"], force=True)
    except Exception:  # noqa: BLE001 - read_image has already judged the file; no study is no error
        return None
    uid = ds.get("StudyInstanceUID")
    return str(uid) if uid else None


def _transfer_syntax(ds: Dataset) -> UID:
    ts = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if ts:
        return UID(ts)
    # A file without meta header: its encoding as read is the transfer syntax.
    implicit, little = ds.original_encoding
    ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = ts
    return ts


def _check_decodable(ts: UID) -> None:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise _PixelError(
            f"unsupported transfer syntax {ts.name} ({ts}): no pydicom plugin decodes it; "
            "convert the file first (e.g. gdcmconv --raw or dcmdjpeg)"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
        raise _PixelError(f"cannot decode transfer syntax {ts.name} ({ts}): install one of: {needs}")


def _uid_name(uid: object) -> str | None:
    return UID_dictionary[uid][0] if uid in UID_dictionary else None


def _rescale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return _minmax(values)
    return (np.asarray(values, dtype=np.float64) - lo) / (float(hi) - float(lo))


def _minmax(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    lo, hi = float(finite.min()), float(finite.max())
    return np.zeros_like(values) if hi == lo else (values - lo) / (hi - lo)
