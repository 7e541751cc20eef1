"""DICOM de-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

The attribute table is the standard's (Table E.1-1, as the ``dicom-anonymizer`` package ships
it); the actions are applied here, nested sequences included, and attributes the table does not
list are caught by kind (person names, dates and times emptied, instance UIDs replaced, private
tags removed). UIDs map through a salted hash: the same within one :class:`Anonymizer`, never
recoverable. BodyPartExamined is kept, filled from the descriptions the profile removes.
docs/architecture.md ("De-identification") has the rules in full.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as _annex_e
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID_dictionary, generate_uid
from rich.progress import track

from limbscan.errors import BadInputError, Skipped
from limbscan.io.bodypart import normalize_body_part
from limbscan.io.dicom import dicom_body_part, pydicom_messages, read_dataset, truncation
from limbscan.io.images import sniff_format
from limbscan.utils.files import atomic_file

log = logging.getLogger(__name__)

PROFILE = "DICOM PS3.15 E.1.1 Basic Application Level Confidentiality Profile"
DEIDENTIFICATION_METHOD = "Basic Application Confidentiality Profile (limbscan)"  # LO: <= 64
# PS3.16 CID 7050: the code for the profile applied.
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

# Table E.1-1 as data: category in the table package -> the standard's action code.
_CATEGORY_ACTIONS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
# What each code does here (module docstring says why).
RESOLVED = {"D": "D", "Z": "Z", "X": "X", "U": "U", "Z/D": "Z", "X/Z": "Z", "X/D": "X", "X/Z/D": "Z", "X/Z/U*": "K"}

# VR -> a dummy value for D. Strings say what happened; numbers are zero.
_DUMMY: dict[str, object] = {
    "AE": "ANONYMIZED", "CS": "ANONYMIZED", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "SH": "ANONYMIZED",
    "ST": "ANONYMIZED", "UC": "ANONYMIZED", "UT": "ANONYMIZED", "PN": "ANONYMIZED", "UR": "",
    "AS": "000Y", "DA": "19000101", "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0",
    "FD": 0.0, "FL": 0.0, "SL": 0, "SS": 0, "SV": 0, "UL": 0, "US": 0, "UV": 0, "AT": None,
}
_KEEP_IN_FILE_META = {Tag(0x0002, 0x0000), Tag(0x0002, 0x0001), Tag(0x0002, 0x0010)}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def annex_e_table() -> tuple[dict[BaseTag, str], list[tuple[int, int, int, int, str]]]:
    """Table E.1-1: ``{tag: code}`` for single tags, and ``(group, element, group mask,
    element mask, code)`` for the repeating groups (curves 50xx, overlay data 60xx)."""
    single: dict[BaseTag, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, code in _CATEGORY_ACTIONS.items():
        for entry in getattr(_annex_e, category):
            if len(entry) == 4:
                masked.append((*entry, code))
            else:
                single[Tag(*entry)] = code
    return single, masked


class Anonymizer:
    """De-identify datasets consistently: one instance per batch that must stay linked.

    Two files of one study get the same new StudyInstanceUID from one instance; another
    instance (another salt) gives unrelated ones, so separate runs cannot be joined.
    """

    def __init__(self, salt: bytes | None = None):
        self._salt = secrets.token_bytes(32) if salt is None else bytes(salt)
        self._table, self._masked = annex_e_table()
        self._uids: dict[str, str] = {}

    def pseudonym(self, patient_id: str | None) -> str | None:
        """A stable stand-in for a patient id within this instance ("anon-<16 hex>")."""
        if patient_id is None or not str(patient_id).strip():
            return None
        digest = hmac.new(self._salt, str(patient_id).strip().encode("utf-8"), hashlib.sha256)
        return f"anon-{digest.hexdigest()[:16]}"

    def new_uid(self, uid: str) -> str:
        """The replacement for an instance UID; the same input gives the same output here."""
        uid = str(uid).strip()
        if uid not in self._uids:
            self._uids[uid] = str(generate_uid(entropy_srcs=[self._salt.hex(), uid]))
        return self._uids[uid]

    def anonymize(self, ds: Dataset) -> Dataset:
        """Apply the profile to ``ds`` in place and return it; PatientID becomes the pseudonym."""
        patient = self.pseudonym(_text(ds.get("PatientID")))
        with pydicom_messages():  # pydicom would quote the values being removed
            body_part = dicom_body_part(ds)
            self._clean(ds)
            file_meta = getattr(ds, "file_meta", None)
            if file_meta is not None:
                self._clean_file_meta(file_meta)
        ds.PatientID = patient or ""
        if body_part and normalize_body_part(_text(ds.get("BodyPartExamined"))) is None:
            ds.BodyPartExamined = body_part.upper()
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        ds.LongitudinalTemporalInformationModified = "REMOVED"
        log.debug("anonymised one dataset")
        return ds

    def anonymize_file(self, src: Path, dst: Path) -> str | None:
        """Anonymise the DICOM file ``src`` into ``dst`` (written atomically); return the
        patient pseudonym (``None`` where the file has no patient id)."""
        src, dst = Path(src), Path(dst)
        ds, patient = self._anonymize_path(src)
        _save_atomic(ds, dst, src)
        return patient

    def output_name(self, ds: Dataset) -> str:
        """File name for an anonymised ``ds``: its new SOP Instance UID, nothing from the input."""
        uid = _text(ds.get("SOPInstanceUID")) or str(generate_uid())
        return f"{uid}.dcm"

    # -- internals -------------------------------------------------------------------------

    def _anonymize_path(self, src: Path) -> tuple[Dataset, str | None]:
        ds = _read_dicom_dataset(src)
        patient = self.pseudonym(_text(ds.get("PatientID")))
        try:
            self.anonymize(ds)
        except Exception as err:  # noqa: BLE001 - its message may quote a value: give the kind
            raise BadInputError(src, f"cannot anonymise this file ({type(err).__name__})") from None
        return ds, patient

    def _code_for(self, tag: BaseTag) -> str | None:
        code = self._table.get(tag)
        if code is not None:
            return code
        for group, element, group_mask, element_mask, masked_code in self._masked:
            if tag.group & group_mask == group & group_mask and tag.element & element_mask == element & element_mask:
                return masked_code
        return None

    def _clean(self, ds: Dataset) -> None:
        for tag in list(ds.keys()):
            if tag.is_private:
                del ds[tag]
                continue
            elem = ds[tag]
            code = self._code_for(tag)
            action = RESOLVED[code] if code else _fallback_action(elem)
            self._apply(ds, elem, action)

    def _apply(self, ds: Dataset, elem: DataElement, action: str) -> None:
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else None
        elif action == "U":
            self._replace_uids(elem)
        elif action == "D":
            self._dummy(elem)
        elif elem.VR == "SQ":  # "K": keep the sequence, clean what it holds
            for item in elem.value:
                self._clean(item)

    def _replace_uids(self, elem: DataElement) -> None:
        if elem.VR != "UI" or elem.value in (None, ""):
            return
        # Well-known UIDs (classes, coding schemes) name no one: they stay.
        if elem.VM > 1:
            elem.value = [v if v in UID_dictionary else self.new_uid(v) for v in elem.value]
        elif elem.value not in UID_dictionary:
            elem.value = self.new_uid(elem.value)

    def _dummy(self, elem: DataElement) -> None:
        if elem.VR == "SQ":
            for item in elem.value:
                for tag in list(item.keys()):
                    if tag.is_private:
                        del item[tag]
                    else:
                        self._dummy(item[tag])
        elif elem.VR == "UI":
            self._replace_uids(elem)
        else:
            elem.value = _DUMMY.get(elem.VR)

    def _clean_file_meta(self, meta: Dataset) -> None:
        for tag in list(meta.keys()):
            elem = meta[tag]
            if tag in _KEEP_IN_FILE_META or keyword_for_tag(tag).endswith("ClassUID"):
                continue
            if elem.VR == "UI":
                self._replace_uids(elem)  # MediaStorageSOPInstanceUID follows SOPInstanceUID
            elif tag == Tag(0x0002, 0x0013):  # Implementation Version Name: software, not people
                continue
            else:
                del meta[tag]  # source/sending/receiving AE titles, private info


def anonymize_tree(
    src: Path,
    dst: Path,
    progress: bool = True,
    *,
    keep_folders: bool = False,
    anonymizer: Anonymizer | None = None,
) -> tuple[list[Path], list[Skipped]]:
    """Anonymise a DICOM file, or every DICOM file under a folder (told by content), into ``dst``.

    Output names carry nothing from the input: ``dst/<patient pseudonym>/<new SOPInstanceUID>.dcm``;
    ``keep_folders=True`` mirrors the input's folders instead (for folders known to be clean). A
    single ``src`` file with ``dst`` ending in ``.dcm`` is written to exactly ``dst``. One
    :class:`Anonymizer` serves the whole tree (pass one to link several calls). Returns the files
    written and the inputs skipped, with why.
    """
    src, dst = Path(src), Path(dst)
    anonymizer = anonymizer or Anonymizer()
    if not src.exists():
        raise BadInputError(src, "file or folder not found")
    if src.is_file():
        files, root = [src], src.parent
    else:
        out = dst.resolve()
        files = [p for p in sorted(src.rglob("*")) if p.is_file() and not p.resolve().is_relative_to(out)]
        root = src
    exact = src.is_file() and dst.suffix.lower() in (".dcm", ".dicom")

    written: list[Path] = []
    skipped: list[Skipped] = []
    taken: set[Path] = set()
    for path in track(files, description="Anonymising", disable=not progress, transient=True):
        try:
            target = _write_one(anonymizer, path, dst, root, exact, keep_folders, taken)
        except BadInputError as err:
            skipped.append(Skipped.from_error(err))
            continue
        written.append(target)
    log.info("anonymised %d file(s), skipped %d", len(written), len(skipped))
    return written, skipped


def _write_one(
    anonymizer: Anonymizer, path: Path, dst: Path, root: Path, exact: bool, keep_folders: bool, taken: set[Path]
) -> Path:
    ds, patient = anonymizer._anonymize_path(path)
    if exact:
        target = dst
    else:
        folder = path.parent.relative_to(root) if keep_folders else Path(patient or "unknown-patient")
        target = dst / folder / anonymizer.output_name(ds)
    if target in taken:
        raise BadInputError(path, "duplicate: another input has the same SOP Instance UID; written once")
    _save_atomic(ds, target, path)
    taken.add(target)
    return target


def _read_dicom_dataset(src: Path) -> Dataset:
    if sniff_format(src) != "dicom":
        raise BadInputError(src, "not a DICOM file")
    with pydicom_messages() as said:
        ds = read_dataset(src)
        problem = truncation(ds, [str(w.message) for w in said])
    if problem:
        raise BadInputError(src, problem)
    media_class = getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", "")
    if _DICOMDIR_CLASS in (str(ds.get("SOPClassUID", "")), str(media_class)):
        raise BadInputError(src, "a DICOMDIR lists patients and file paths: not copied; rebuild it from the output")
    return ds


def _save_atomic(ds: Dataset, dst: Path, src: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with pydicom_messages(), atomic_file(dst, "wb") as fh:
            ds.save_as(fh)
    except Exception as err:  # noqa: BLE001 - e.g. a value pydicom cannot encode
        raise BadInputError(src, f"cannot write the anonymised file ({type(err).__name__})") from None


def _fallback_action(elem: DataElement) -> str:
    """Action for an attribute Table E.1-1 does not list, by what kind of value it holds."""
    if elem.VR == "SQ":
        return "K"
    if elem.VR == "UN":  # a public tag pydicom does not know: nobody can say it is safe
        return "X"
    if elem.VR in ("PN", "DA", "DT", "TM"):
        return "Z"
    if elem.VR == "UI" and not keyword_for_tag(elem.tag).endswith("ClassUID"):
        values = elem.value if elem.VM > 1 else [elem.value]
        if any(v and str(v) not in UID_dictionary for v in values):
            return "U"
    return "K"


def _text(value: object) -> str | None:
    return None if value is None else str(value)

