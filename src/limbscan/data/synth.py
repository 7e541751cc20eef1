"""Synthetic phantoms: procedurally drawn long-bone "radiographs" for tests and offline demos.

NOT radiographs: a soft-tissue limb and one or two long bones, projected as hollow tubes (so the
cortex shows as two bright lines), blurred and noisy; abnormal ones get a thin fracture line with
its box and polygon. :func:`synthesize` writes a whole dataset in limbscan's schema, half PNG (8-
and 16-bit), half DICOM (12-bit, MONOCHROME1 and 2), so everything runs without patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from rich.progress import track

from limbscan.data.dataset import DATASET_FILE, Dataset, DatasetBuilder
from limbscan.errors import LimbscanError
from limbscan.io import LOWER_LIMB_PARTS, read_image

DESCRIPTION = "SYNTHETIC phantoms drawn by limbscan: not radiographs, for tests and demos only"
# BodyPartExamined defined terms (DICOM PS3.16 Annex L) for the seven parts.
DICOM_BODY_PART = {
    "toe": "TOE", "foot": "FOOT", "ankle": "ANKLE", "leg": "LEG",
    "knee": "KNEE", "femur": "FEMUR", "hip": "HIP",
}
# (height, width) choices: modest, so tests and the demo stay fast; varied, so resizing is exercised.
SIZES = ((320, 224), (384, 256), (416, 288), (448, 320), (352, 352))
MIN_SIDE = 64

README = """# Synthetic phantoms — not radiographs

Every image in this folder was drawn by `limbscan data synth` (seed {seed}): a procedural
model of a limb with one or two long bones and, in {n_abnormal} of {n} images, a drawn
fracture line. They contain no patient data and no real anatomy. Use them for tests and
offline demos only; a model trained on them says nothing about real radiographs.

- `dataset.json`: limbscan's dataset schema (COCO + image-level fields), `info.synthetic = true`
- `images/`: half PNG (8- and 16-bit), half DICOM (CR, 12-bit, MONOCHROME2 and MONOCHROME1);
  the DICOM PatientID is the synthetic id (`synth-NNNN`), and no other patient field is filled
"""


@dataclass
class _Bone:
    """One tube along the shared limb axis: ``t`` runs along it, ``d`` across it."""

    offset: float  # of its axis from the limb axis, along d
    t0: float  # ends along the axis (rounded caps beyond them)
    t1: float
    r0: float  # shaft radius
    flare: float  # relative widening at the ends (metaphysis / condyles)
    flare_len: float
    cap: float  # > 1 flattens the rounded end into a blunter articular surface
    cortex: float  # shaft cortex thickness
    mu_cortex: float
    mu_medulla: float


@dataclass
class _Fracture:
    bone: int  # index into the bones list
    t: float  # where the line crosses the bone axis
    slope: float  # tan of the line's angle to the perpendicular
    knots: np.ndarray  # d positions of the jagged line's control points
    jag: np.ndarray  # its offsets along t at those points
    half_width: float
    depth: float  # fraction of the bone's attenuation the gap removes
    step: float  # displacement of the distal fragment across the axis at the line (px)
    step_len: float  # how fast that displacement fades away from the line


def make_phantom(
    rng: np.random.Generator, size: tuple[int, int] = (384, 256), fracture: bool = False,
    fracture_width: float = 1.0,
) -> tuple[np.ndarray, list[dict]]:
    """Draw one phantom of ``size = (height, width)``.

    Returns a float32 image in [0, 1] (bone bright) and its lesions, each
    ``{"bbox": [x, y, w, h], "polygon": [x0, y0, x1, y1, ...]}`` in pixels; no lesions
    unless ``fracture``. The fracture's parameters are drawn either way, so one generator
    state gives the same limb with and without its fracture. ``fracture_width`` scales the
    fracture gap (1: a 1-3 px hairline; larger: easier to see, for short demos).
    """
    image, lesions, _ = _draw(rng, size, fracture, fracture_width)
    return image, lesions


def _draw(
    rng: np.random.Generator, size: tuple[int, int], fracture: bool, fracture_width: float = 1.0
) -> tuple[np.ndarray, list[dict], dict[str, int]]:
    """:func:`make_phantom`, plus tags describing what was drawn (for dataset attributes)."""
    h, w = (int(v) for v in size)
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"phantom size {h}x{w} is too small (each side at least {MIN_SIDE} px)")
    theta = rng.uniform(-0.4, 0.4)  # radians from vertical
    centre = np.array([w / 2 + rng.uniform(-0.12, 0.12) * w, h / 2 + rng.uniform(-0.1, 0.1) * h])
    axis = np.array([np.sin(theta), np.cos(theta)])  # image (x, y), pointing down the limb
    across = np.array([np.cos(theta), -np.sin(theta)])
    bones, limb_radius, limb_offset, pair = _draw_bones(rng, h, w)
    frac = _draw_fracture(rng, bones, centre, axis, across, h, w)
    frac.half_width *= fracture_width
    texture = _blur(rng.standard_normal((h, w)), 1.2)
    texture /= texture.std() + 1e-6

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rel_x, rel_y = xs - centre[0], ys - centre[1]
    t = rel_x * axis[0] + rel_y * axis[1]
    d = rel_x * across[0] + rel_y * across[1]

    # Soft tissue: a cylinder wider than the bones, extending past the frame.
    soft_r = limb_radius * (1 + 0.08 * np.sin(t / (3.0 * limb_radius) + rng.uniform(0, 2 * np.pi)))
    soft_target = rng.uniform(0.18, 0.32)  # brightness at the limb's centre line
    mu_soft = -np.log(1 - soft_target) / (2 * limb_radius)
    atten = mu_soft * 2 * np.sqrt(np.maximum(soft_r**2 - (d - limb_offset) ** 2, 0))
    tex_amp = rng.uniform(0.15, 0.35)
    for i, bone in enumerate(bones):
        f = frac if (fracture and frac.bone == i) else None
        atten += _bone_attenuation(t, d - bone.offset, bone, f, texture, tex_amp)

    background = rng.uniform(0.02, 0.07)
    image = background + (1 - background) * (1 - np.exp(-atten))
    # Heel effect / uneven exposure: a gentle ramp across the frame.
    ramp_dir = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ramp_dir) * (xs / w - 0.5) + np.sin(ramp_dir) * (ys / h - 0.5)) * rng.uniform(0.0, 0.15)
    image = _blur(image * (1 + ramp), rng.uniform(0.6, 1.1))
    image = image + rng.normal(0, rng.uniform(0.008, 0.02), size=image.shape)
    image = np.clip(image, 0, 1).astype(np.float32)

    lesions = [_lesion(frac, bones[frac.bone], centre, axis, across, h, w)] if fracture else []
    tags = {
        "two_bones": int(pair),
        "joint": int(len(bones) > 1 + pair),
        "displaced": int(fracture and frac.step != 0),
    }
    return image, lesions, tags


def _draw_bones(rng: np.random.Generator, h: int, w: int) -> tuple[list[_Bone], float, float, bool]:
    """The main bone, maybe a thinner partner beside it, maybe the next bone across a joint."""
    short = min(h, w)
    r0 = rng.uniform(0.055, 0.085) * short
    two = rng.random() < 0.5  # tibia + fibula style pair
    reach = np.hypot(h, w)

    def bone(offset: float, radius: float, t0: float, t1: float) -> _Bone:
        cortex = radius * rng.uniform(0.3, 0.45)
        inner = radius - cortex
        target = rng.uniform(1.3, 2.1)  # attenuation along the cortex seen edge-on
        mu_c = target / (2 * np.sqrt(radius**2 - inner**2))
        return _Bone(
            offset=offset, t0=t0, t1=t1, r0=radius,
            flare=rng.uniform(0.45, 0.9), flare_len=radius * rng.uniform(2.0, 3.0), cap=rng.uniform(1.8, 3.0),
            cortex=cortex, mu_cortex=mu_c, mu_medulla=mu_c * rng.uniform(0.12, 0.25),
        )

    # Each end is either off the frame or visible with its flared joint end.
    t0 = -rng.uniform(0.3, 0.9) * h
    t1 = rng.uniform(0.3, 0.9) * h
    bones = [bone(0.0, r0, t0, t1)]
    limb_offset = rng.uniform(-0.4, 0.4) * r0
    if two:
        side = rng.choice([-1.0, 1.0])
        r2 = r0 * rng.uniform(0.4, 0.55)
        gap = rng.uniform(0.4, 1.0) * r0
        bones.append(bone(side * (r0 + gap + r2), r2, t0 + rng.uniform(0, 0.1) * h, t1 - rng.uniform(0, 0.1) * h))
        limb_offset += side * (r0 + gap + r2) / 2
    # A joint: the next bone across a narrow gap, where an end shows in the frame.
    if t1 < 0.5 * h and rng.random() < 0.6:
        joint_gap = rng.uniform(0.25, 0.45) * r0
        bones.append(bone(rng.uniform(-0.2, 0.2) * r0, r0 * rng.uniform(0.8, 1.1), t1 + joint_gap, reach))
    # Soft tissue around the bones, narrower than the frame so air shows at its sides.
    extent = max(abs(b.offset - limb_offset) + b.r0 for b in bones)
    limb_radius = extent + r0 * rng.uniform(1.0, 2.4)
    return bones, limb_radius, limb_offset, two


def _draw_fracture(
    rng: np.random.Generator, bones: list[_Bone], centre: np.ndarray, axis: np.ndarray,
    across: np.ndarray, h: int, w: int,
) -> _Fracture:
    """Place a fracture on a shaft, inside the frame with a margin for its whole box."""
    index = 1 if len(bones) > 1 and bones[1].t0 < 0 < bones[1].t1 and rng.random() < 0.3 else 0
    bone = bones[index]
    slope = np.tan(rng.uniform(-0.6, 0.6))
    span = bone.r0 * (1 + abs(slope)) + 8  # half-extent of the lesion around its centre point
    end_margin = min(2.5 * bone.flare_len, 0.3 * (bone.t1 - bone.t0))  # on the shaft, off the flares
    ts = np.linspace(bone.t0 + end_margin, bone.t1 - end_margin, 200)
    points = centre + np.outer(ts, axis) + bone.offset * across
    inside = (
        (points[:, 0] > span) & (points[:, 0] < w - span) & (points[:, 1] > span) & (points[:, 1] < h - span)
    )
    pick = rng.random()
    if inside.any():
        t_f = float(ts[inside][min(int(pick * inside.sum()), int(inside.sum()) - 1)])
    else:  # a cramped frame: the shaft point nearest the middle (the lesion is clipped to the frame)
        t_f = float(ts[np.argmin(np.linalg.norm(points - [w / 2, h / 2], axis=1))])
    reach = bone.r0 * (1 + bone.flare) + 4
    knots = np.arange(-reach, reach + 4, rng.uniform(2.5, 5.0))
    return _Fracture(
        bone=index, t=t_f, slope=float(slope), knots=knots,
        jag=rng.normal(0, rng.uniform(0.5, 1.5), size=len(knots)),
        half_width=rng.uniform(0.6, 1.4), depth=rng.uniform(0.55, 0.9),
        step=(rng.uniform(1.0, 2.5) * rng.choice([-1.0, 1.0])) if rng.random() < 0.4 else 0.0,
        step_len=rng.uniform(1.5, 3.0),
    )


def _fracture_line(frac: _Fracture, d: np.ndarray) -> np.ndarray:
    """Where the line crosses, along t, at each distance d from the bone's axis."""
    return frac.t + frac.slope * d + np.interp(d, frac.knots, frac.jag)


def _bone_attenuation(
    t: np.ndarray, d: np.ndarray, bone: _Bone, frac: _Fracture | None,
    texture: np.ndarray, tex_amp: float,
) -> np.ndarray:
    if frac is not None:
        beyond = t - _fracture_line(frac, d)
        # The distal fragment sits a little across the axis, most at the line itself.
        d = d - frac.step * np.where(beyond > 0, np.exp(-((np.maximum(beyond, 0) / frac.step_len) ** 2)), 0.0)
    tc = np.clip(t, bone.t0, bone.t1)
    ends = _ends(bone, tc)
    outer = bone.r0 * (1 + bone.flare * ends)
    inner = np.maximum(outer - bone.cortex * (1 - 0.7 * ends), 0)  # thin cortex over the joint ends
    rho2 = d**2 + (bone.cap * (t - tc)) ** 2  # past an end, distance to the cap: a rounded end
    path_out = 2 * np.sqrt(np.maximum(outer**2 - rho2, 0))
    path_in = 2 * np.sqrt(np.maximum(inner**2 - rho2, 0))
    # Cancellous bone at the ends shows as texture; the shaft's medulla is smoother.
    medulla = bone.mu_medulla * path_in * (1 + tex_amp * (0.3 + ends) * texture)
    atten = bone.mu_cortex * (path_out - path_in) + np.maximum(medulla, 0)
    if frac is not None:
        gap = np.abs(beyond) / frac.half_width
        atten = atten * (1 - frac.depth / (1 + gap**6))  # a soft-edged band with no bone in it
    return atten


def _ends(bone: _Bone, t: np.ndarray | float) -> np.ndarray | float:
    """0 along the shaft, rising to 1 at the flared ends."""
    near0 = np.exp(-(((t - bone.t0) / bone.flare_len) ** 2))
    near1 = np.exp(-(((bone.t1 - t) / bone.flare_len) ** 2))
    return np.minimum(near0 + near1, 1.0)


def _lesion(
    frac: _Fracture, bone: _Bone, centre: np.ndarray, axis: np.ndarray, across: np.ndarray, h: int, w: int
) -> dict:
    """A band polygon hugging the fracture line across the bone, and its box."""
    # Across the bone's width at the line (plus the step and blur), along the jagged line.
    reach = bone.r0 * (1 + bone.flare * _ends(bone, frac.t)) + abs(frac.step) + 2.0
    d = np.linspace(-reach, reach, max(8, int(2 * reach)))
    line = _fracture_line(frac, d)
    # The band: the gap and its blur, and on the distal side the stretch where a displaced
    # fragment moves (its step fades as a Gaussian: 2 % left at twice step_len).
    before = frac.half_width + 2.0
    after = before + (2 * frac.step_len if frac.step else 0.0)
    side_a = np.concatenate([line - before, (line + after)[::-1]])
    side_d = np.concatenate([d, d[::-1]]) + bone.offset
    xy = centre + np.outer(side_a, axis) + np.outer(side_d, across)
    xy = np.round(np.clip(xy, 0, [w, h]), 2)  # the box is made from the rounded points, so holds them
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return {
        "bbox": [float(x0), float(y0), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
        "polygon": [float(v) for v in xy.reshape(-1)],
    }


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders."""
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    h, w = image.shape
    padded = np.pad(image, radius, mode="reflect")
    rows = sum(k * padded[i : i + h, :] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : i + w] for i, k in enumerate(kernel))


# -- writing a dataset ----------------------------------------------------------------


def synthesize(
    out: str | Path, n: int = 200, seed: int = 0, abnormal_fraction: float = 0.3, progress: bool = True,
    fracture_width: float = 1.0,
) -> Dataset:
    """Write ``n`` phantoms and their dataset under ``out``; the same seed gives the same files.

    Exactly ``round(n * abnormal_fraction)`` images have a fracture. Images come 1-3 per
    synthetic patient (``synth-NNNN``, one body part each) so patient-level splitting has
    groups to keep together. Each written file is read back with :func:`limbscan.io.read_image`
    for its metadata, which proves the readers take it.
    """
    out = Path(out)
    if n < 1:
        raise LimbscanError(f"synth: n must be at least 1, got {n}")
    if fracture_width <= 0:
        raise LimbscanError(f"synth: fracture_width must be > 0, got {fracture_width}")
    if not 0 <= abnormal_fraction <= 1:
        raise LimbscanError(f"synth: abnormal_fraction must lie in [0, 1], got {abnormal_fraction}")
    _refuse_real_dataset(out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*images_dir.glob("synth-*.png"), *images_dir.glob("synth-*.dcm")]:
        stale.unlink()  # a smaller rerun must not leave orphans from a bigger one

    rng = np.random.default_rng(seed)
    n_abnormal = int(round(n * abnormal_fraction))
    labels = np.zeros(n, dtype=int)
    labels[rng.permutation(n)[:n_abnormal]] = 1
    patients, parts = [], []
    while len(patients) < n:
        pid = f"synth-{len(set(patients)) + 1:04d}"
        part = str(rng.choice(LOWER_LIMB_PARTS))
        for _ in range(int(rng.integers(1, 4))):
            patients.append(pid)
            parts.append(part)

    builder = DatasetBuilder(root=out, source="synthetic", synthetic=True, description=DESCRIPTION)
    for i in track(range(n), description="Drawing phantoms", disable=not progress, transient=True):
        image_rng = np.random.default_rng([seed, i])  # each image independent of n
        size = SIZES[int(image_rng.integers(len(SIZES)))]
        pixels, lesions, tags = _draw(image_rng, size, fracture=bool(labels[i]), fracture_width=fracture_width)
        # Four file kinds in turn: exactly half PNG, half DICOM.
        kind = ("png8", "dicom-mono2", "png16", "dicom-mono1")[i % 4]
        path = images_dir / f"synth-{i + 1:05d}.{'png' if kind.startswith('png') else 'dcm'}"
        if kind.startswith("png"):
            _write_png(path, pixels, bits=8 if kind == "png8" else 16)
        else:
            _write_dicom(
                path, pixels, patient_id=patients[i], body_part=parts[i],
                monochrome1=kind == "dicom-mono1", seed=seed, index=i,
            )
        _, meta = read_image(path)
        image_id = builder.add_image(
            path, meta, label=int(labels[i]), body_part=parts[i], patient_id=patients[i], attributes=tags,
            study=patients[i],  # one study per synthetic patient, as its DICOM files' StudyInstanceUID says
        )
        for lesion in lesions:
            builder.add_lesion(image_id, lesion["bbox"], [lesion["polygon"]])
    if builder.skipped:  # every box is drawn inside its image; anything else is a bug here
        raise LimbscanError(f"synth: drew an invalid lesion: {builder.skipped[0]}")
    dataset = builder.build()
    dataset.save()
    n_written = sum(im["label"] for im in dataset.images)
    (out / "README.md").write_text(README.format(seed=seed, n=n, n_abnormal=n_written))
    return dataset


def _refuse_real_dataset(out: Path) -> None:
    """Never overwrite a dataset that is not synthetic: it may hold a user's work."""
    existing = out / DATASET_FILE
    if existing.is_file():
        try:
            synthetic = Dataset.load(out).synthetic
        except LimbscanError:
            synthetic = False
        if not synthetic:
            raise LimbscanError(f"{out}: holds a dataset that is not synthetic; choose another folder")


def _write_png(path: Path, pixels: np.ndarray, bits: int) -> None:
    top = (1 << bits) - 1
    values = np.round(pixels * top).astype(np.uint8 if bits == 8 else np.uint16)
    Image.fromarray(values).save(path)


def _write_dicom(
    path: Path, pixels: np.ndarray, patient_id: str, body_part: str, monochrome1: bool, seed: int, index: int
) -> None:
    """A CR image: Explicit VR Little Endian, 12 bits stored in 16, no patient data but the synthetic id."""

    def uid(*parts: object):
        # Derived from the seed, so reruns write identical files.
        return generate_uid(entropy_srcs=["limbscan-synth", str(seed), *map(str, parts)])

    stored = np.round(pixels * 4095).astype(np.uint16)
    if monochrome1:  # MONOCHROME1 shows low values bright: store the complement
        stored = 4095 - stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = uid("instance", index)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study", patient_id)  # one study per synthetic patient
    ds.SeriesInstanceUID = uid("series", index)
    ds.Modality = "CR"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.BodyPartExamined = DICOM_BODY_PART[body_part]
    ds.ImageComments = "SYNTHETIC PHANTOM drawn by limbscan - not a radiograph"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    # The full 12-bit range, so a reader's windowing gives back the drawn grey levels.
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PixelSpacing = [0.2, 0.2]
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
