"""One entry point for every radiograph file: DICOM, PNG (8/16 bit) or JPEG, told by content.

``read_image(path)`` returns a float32 H x W array in [0, 1] (bone bright) and an
:class:`ImageMeta`; whatever goes wrong is a :class:`BadInputError` naming the file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from limbscan.errors import BadInputError
from limbscan.io.dicom import read_dicom
from limbscan.io.meta import ImageMeta

FORMATS = ("dicom", "png", "jpeg")

# PIL only offers a module-wide switch for decoding truncated files; flip it for one
# load at a time and put it back, so other loads still notice truncation.
_TRUNCATED_SWITCH = threading.Lock()
_EXIF_ORIENTATION = 0x0112


def sniff_format(path: str | Path) -> str | None:
    """``"dicom"``, ``"png"``, ``"jpeg"`` from the file's first bytes, or ``None``.

    A missing or unreadable file is a :class:`BadInputError`.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError as err:
        raise BadInputError(path, _os_problem(err)) from None
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> str | None:
    """The format of a file from its first 132 bytes (see :func:`sniff_format`)."""
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if _looks_like_bare_dicom(head):
        return "dicom"
    return None


def read_image(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a radiograph: float32 H x W in [0, 1] with bone bright, and its metadata."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(path, "is a folder, not an image file")
    fmt = sniff_format(path)
    if fmt is None:
        size = path.stat().st_size
        if size == 0:
            raise BadInputError(path, "empty file (0 bytes)")
        if path.suffix.lower() in (".dcm", ".dicom"):
            raise BadInputError(path, "named like DICOM but is not: no 'DICM' marker at byte 128")
        raise BadInputError(path, "not a DICOM, PNG or JPEG file (content not recognised)")
    if fmt == "dicom":
        return read_dicom(path)
    return read_raster(path, fmt)


def read_raster(path: str | Path, fmt: str) -> tuple[np.ndarray, ImageMeta]:
    """PNG or JPEG through PIL; colour is reduced to grey, 16-bit kept at full depth."""
    path = Path(path)
    warnings: list[str] = []
    truncated = False
    try:
        with Image.open(path) as im:
            _check_size(path, im)
            # PIL's parser stops where the compressed pixels begin.
            data_start = im.fp.tell()
            try:
                im.load()
            except OSError as err:
                if "truncated" not in str(err):
                    raise
                truncated = True
        if truncated:
            if path.stat().st_size <= data_start:
                raise BadInputError(path, f"truncated {fmt.upper()}: the file ends before any image data")
            with Image.open(path) as im, _decode_truncated():
                im.load()
    except BadInputError:
        raise
    except UnidentifiedImageError:
        raise BadInputError(path, _unidentified(path, fmt)) from None
    except (OSError, SyntaxError, ValueError) as err:
        problem = str(err).replace(str(path), "the file")
        raise BadInputError(path, f"cannot decode {fmt.upper()}: {problem}") from None
    except Image.DecompressionBombError as err:
        raise BadInputError(path, f"image too large to decode safely: {err}") from None

    pixels, bits = grey_pixels(im)
    if truncated:
        if pixels.size == 0 or float(pixels.max()) == float(pixels.min()):
            raise BadInputError(path, f"truncated {fmt.upper()}: no image data decodes")
        warnings.append(f"truncated {fmt.upper()}: the missing end of the image was filled by the decoder")
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation != 1:
        warnings.append(f"EXIF orientation {orientation} ignored: pixels are in stored order")
    meta = ImageMeta(
        width=pixels.shape[1],
        height=pixels.shape[0],
        format=fmt,
        bits_stored=bits,
        photometric=im.mode,
        truncated=truncated,
        warnings=warnings,
    )
    return pixels, meta


def grey_pixels(im: Image.Image) -> tuple[np.ndarray, int]:
    """A loaded PIL image as float32 grey in [0, 1], and the bit depth it was scaled by."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit PNG: full range is 65535 (PIL's "I" holds it widened to 32 bits).
        arr = np.asarray(im, dtype=np.float32) / 65535.0
        return np.clip(arr, 0.0, 1.0), 16
    if im.mode == "LA":
        im = im.getchannel("L")
    elif im.mode != "L":
        # RGB(A), palette, CMYK, bilevel: PIL's luma conversion (ITU-R 601).
        im = im.convert("RGB").convert("L") if im.mode in ("CMYK", "YCbCr", "LAB", "HSV") else im.convert("L")
    return np.asarray(im, dtype=np.float32) / 255.0, 8


@contextmanager
def _decode_truncated() -> Iterator[None]:
    with _TRUNCATED_SWITCH:
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def _check_size(path: Path, im: Image.Image) -> None:
    if im.width == 0 or im.height == 0:
        raise BadInputError(path, f"image has zero size ({im.width}x{im.height})")


def _unidentified(path: Path, fmt: str) -> str:
    """Why PIL could not even open a file that starts like ``fmt``."""
    if fmt == "png":
        with path.open("rb") as f:
            header = f.read(24)
        # IHDR holds width and height right after the signature; PIL refuses zero.
        if len(header) == 24 and header[12:16] == b"IHDR":
            width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
            if width == 0 or height == 0:
                return f"image has zero size ({width}x{height})"
    return f"cannot decode {fmt.upper()}: its header is damaged or incomplete"


def _looks_like_bare_dicom(head: bytes) -> bool:
    """Old DICOM files without preamble start with a group 0x0002/0x0008 element (LE)."""
    if len(head) < 8 or head[0:2] not in (b"\x02\x00", b"\x08\x00") or head[3] != 0:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR
        return True
    # Implicit VR: a 4-byte length that is plausible for a header element.
    return int.from_bytes(head[4:8], "little") < 1024


def _os_problem(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(err, PermissionError):
        return "cannot read the file: permission denied"
    return f"cannot read the file ({err.strerror or type(err).__name__})"
