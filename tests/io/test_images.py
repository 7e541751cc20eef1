"""read_image on PNG / JPEG, format sniffing, and every bad-input case."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from limbscan.errors import BadInputError
from limbscan.io import read_image, sniff_format


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _textured(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth, non-constant 8-bit picture (JPEG keeps it close)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    return (127 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 2, (h, w))).clip(0, 255).astype(np.uint8)


def _assert_bad(path: Path, *words: str) -> BadInputError:
    with pytest.raises(BadInputError) as info:
        read_image(path)
    err = info.value
    assert str(err).startswith(str(path)), "the message must name the file"
    for word in words:
        assert word.lower() in err.problem.lower(), err.problem
    return err


# -- format detection -----------------------------------------------------------------------


def test_sniff_format_goes_by_content_not_extension(tmp_path, pydicom_data):
    png_named_dcm = tmp_path / "scan.dcm"
    png_named_dcm.write_bytes(_png_bytes(_textured()))
    dicom_named_png = tmp_path / "scan.png"
    dicom_named_png.write_bytes(pydicom_data("CT_small.dcm").read_bytes())
    jpeg_no_ext = tmp_path / "scan"
    jpeg_no_ext.write_bytes(_jpeg_bytes(_textured()))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all\n" * 20)

    assert sniff_format(png_named_dcm) == "png"
    assert sniff_format(dicom_named_png) == "dicom"
    assert sniff_format(jpeg_no_ext) == "jpeg"
    assert sniff_format(text) is None
    # and read_image follows the content
    pixels, meta = read_image(dicom_named_png)
    assert meta.format == "dicom" and pixels.shape == (128, 128)
    assert read_image(png_named_dcm)[1].format == "png"


# -- PNG / JPEG ---------------------------------------------------------------------------------


def test_png_8bit_grey_is_scaled_by_255(tmp_path):
    arr = _textured()
    path = tmp_path / "a.png"
    path.write_bytes(_png_bytes(arr))
    pixels, meta = read_image(path)
    assert pixels.dtype == np.float32 and pixels.shape == arr.shape
    np.testing.assert_allclose(pixels, arr / 255.0, atol=1e-6)
    assert (meta.width, meta.height, meta.format, meta.bits_stored) == (128, 96, "png", 8)
    assert not meta.truncated and meta.warnings == []


def test_png_16bit_is_scaled_by_65535_not_255(tmp_path):
    arr = np.linspace(0, 65535, 64 * 80).reshape(64, 80).astype(np.uint16)
    arr[0, 1] = 255  # an 8-bit reader would call this white
    path = tmp_path / "deep.png"
    path.write_bytes(_png_bytes(arr))
    assert Image.open(path).mode.startswith("I")  # really stored as 16-bit

    pixels, meta = read_image(path)
    np.testing.assert_allclose(pixels, arr / 65535.0, atol=1e-6)
    assert pixels[0, 1] == pytest.approx(255 / 65535, abs=1e-6)
    assert pixels.max() == pytest.approx(1.0) and pixels.min() == 0.0
    assert meta.bits_stored == 16


def test_rgb_jpeg_is_reduced_to_grey(tmp_path):
    grey = _textured()
    rgb = np.stack([grey, (grey * 0.5).astype(np.uint8), 255 - grey], axis=-1)
    path = tmp_path / "colour.jpg"
    path.write_bytes(_jpeg_bytes(rgb))
    pixels, meta = read_image(path)
    assert pixels.shape == grey.shape and meta.format == "jpeg" and meta.photometric == "RGB"
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    assert np.abs(pixels - luma).mean() < 0.02  # JPEG is lossy; the channels were weighted as luma


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA"])
def test_alpha_and_palette_pngs_are_reduced_to_grey(tmp_path, mode):
    grey = _textured()
    rgb = Image.fromarray(np.stack([grey] * 3, axis=-1))
    im = rgb.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else rgb.convert(mode)
    path = tmp_path / f"{mode}.png"
    im.save(path)
    pixels, _ = read_image(path)
    assert pixels.ndim == 2 and pixels.shape == grey.shape
    tolerance = 0.03 if mode == "P" else 1e-6  # the palette quantises
    assert np.abs(pixels - grey / 255.0).mean() < tolerance


def test_truncated_jpeg_decodes_what_is_there_and_says_so(tmp_path):
    data = _jpeg_bytes(_textured(256, 256))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * 0.7)])
    pixels, meta = read_image(path)
    assert meta.truncated is True
    assert any("truncated" in w for w in meta.warnings)
    assert pixels.shape == (256, 256) and pixels.std() > 0.05
    # the top, decoded before the cut, matches the intact image
    intact, intact_meta = read_image(_write(tmp_path / "whole.jpg", data))
    assert intact_meta.truncated is False
    np.testing.assert_allclose(pixels[:32], intact[:32], atol=1e-6)
    # PIL's module-wide switch is back to its default for everyone else
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_jpeg_cut_before_any_image_data_is_bad_input(tmp_path):
    data = _jpeg_bytes(_textured())
    start_of_scan = data.index(b"\xff\xda")
    scan_header_length = struct.unpack(">H", data[start_of_scan + 2 : start_of_scan + 4])[0]
    path = _write(tmp_path / "headers_only.jpg", data[: start_of_scan + 2 + scan_header_length])
    _assert_bad(path, "JPEG")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- real FracAtlas JPEGs --------------------------------------------------------------------


@pytest.mark.realdata
def test_fracatlas_fractured_jpeg_reads(fracatlas_root):
    path = sorted((fracatlas_root / "images" / "Fractured").glob("*.jpg"))[0]
    pixels, meta = read_image(path)
    assert pixels.dtype == np.float32 and pixels.ndim == 2
    assert (meta.height, meta.width) == pixels.shape and meta.format == "jpeg"
    assert 0.0 <= pixels.min() < pixels.max() <= 1.0
    assert meta.truncated is False


@pytest.mark.realdata
def test_fracatlas_truncated_jpeg_reads_flagged(fracatlas_root):
    path = fracatlas_root / "images" / "Non_fractured" / "IMG0004029.jpg"
    if not path.is_file():
        pytest.skip("IMG0004029.jpg is not in this FracAtlas subset")
    with pytest.raises(OSError):  # really truncated: plain PIL refuses it
        Image.open(path).load()
    pixels, meta = read_image(path)
    assert meta.truncated is True and meta.warnings
    assert pixels.shape == (meta.height, meta.width) and pixels.std() > 0.05
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# -- bad input -------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    _assert_bad(_write(tmp_path / "empty.dcm", b""), "empty")
    _assert_bad(_write(tmp_path / "empty.png", b""), "empty")


def test_missing_file(tmp_path):
    _assert_bad(tmp_path / "nope.dcm", "not found")


def test_folder_is_not_an_image(tmp_path):
    _assert_bad(tmp_path, "folder")


def test_non_image_named_dcm_says_it_is_not_dicom(tmp_path):
    path = _write(tmp_path / "report.dcm", b"Patient report, plain text. " * 20)
    _assert_bad(path, "DICOM")


def test_unrecognised_content(tmp_path):
    _assert_bad(_write(tmp_path / "x.bin", os.urandom(512)), "not a DICOM, PNG or JPEG")


def test_zero_by_zero_png(tmp_path):
    data = bytearray(_png_bytes(np.zeros((4, 4), np.uint8)))
    # IHDR: 4-byte length, b"IHDR", width, height, ... then a CRC over type + data.
    data[16:24] = struct.pack(">II", 0, 0)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    _assert_bad(_write(tmp_path / "empty_image.png", bytes(data)), "0x0")


def test_corrupt_png_body(tmp_path):
    data = _png_bytes(_textured())
    _assert_bad(_write(tmp_path / "broken.png", data[:60] + b"\x00" * 200), "PNG")


def test_unreadable_file(tmp_path, monkeypatch):
    # chmod 0 stops no root process (CI runs as root): the operating system's refusal is faked instead.
    path = _write(tmp_path / "locked.png", _png_bytes(_textured()))
    real_open = Path.open

    def refuse(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    _assert_bad(path, "permission")
