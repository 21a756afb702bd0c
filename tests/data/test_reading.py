"""Reading files as stored: dtypes kept, TIFF axes from the file, palette and grey+alpha masks, clear refusals."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_train.data.reading import match_channels, probe_channels, read_image, read_mask, read_stack, tiff_yxc
from unet_train.errors import DataError
from unet_train.predict import to_input

USGRA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "usgra-seg"
if not USGRA.is_dir():
    USGRA = Path("/work/shared/data/usgra-seg")

RNG = np.random.default_rng(0)


def test_png_images_keep_their_dtype_and_16_bit_colour(tmp_path):
    grey16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgb16 = RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    rgb8 = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb8).save(tmp_path / "rgb8.png")
    for name, expected in (("g16.png", grey16), ("rgb16.png", rgb16), ("rgb8.png", rgb8)):
        image = read_image(tmp_path / name)
        assert image.dtype == expected.dtype, name
        np.testing.assert_array_equal(image, expected)
        assert probe_channels(tmp_path / name) == (1 if expected.ndim == 2 else 3)


def write_grey_alpha_16(path: Path, grey: np.ndarray) -> None:
    """A 16-bit grey + alpha PNG (colour type 4), which neither Pillow nor OpenCV writes, from its chunks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = np.stack([grey, np.full_like(grey, 65535)], axis=-1).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", grey.shape[1], grey.shape[0], 16, 4, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_16_bit_grey_alpha_png_keeps_16_bits_and_one_channel(tmp_path):
    # Pillow reads it as 8-bit RGBA (40000 -> 156): the image and the mask come from OpenCV instead.
    grey = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    write_grey_alpha_16(tmp_path / "ga16.png", grey)
    image = read_image(tmp_path / "ga16.png")
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, grey)
    assert probe_channels(tmp_path / "ga16.png") == 1
    np.testing.assert_array_equal(read_mask(tmp_path / "ga16.png"), grey)


def test_grey_alpha_tiff_is_grey(tmp_path):
    # A minisblack TIFF with an alpha extra sample is one grey channel, as a grey + alpha PNG is.
    pixels = np.stack([RNG.integers(0, 65536, (5, 7), dtype=np.uint16), np.full((5, 7), 65535, np.uint16)], -1)
    tifffile.imwrite(tmp_path / "ga.tif", pixels, photometric="minisblack", extrasamples=[2], planarconfig="contig")
    image = read_image(tmp_path / "ga.tif")
    np.testing.assert_array_equal(image, pixels[..., 0])
    assert probe_channels(tmp_path / "ga.tif") == 1
    np.testing.assert_array_equal(read_mask(tmp_path / "ga.tif"), pixels[..., 0])  # the mask's alpha is no class
    # Two channels without an alpha mark stay two channels.
    tifffile.imwrite(tmp_path / "two.tif", pixels, photometric="minisblack", planarconfig="contig")
    assert read_image(tmp_path / "two.tif").shape == (5, 7, 2)


def test_alpha_is_dropped_and_palette_images_give_their_colours(tmp_path):
    grey = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 200)], -1), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), grey)
    rgba = RNG.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    palette = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[1, 0], [0, 0, 255])  # an image: its colours


def test_float32_tiff_and_nan_refused(tmp_path):
    data = RNG.normal(100.0, 30.0, (16, 18)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data)
    image = read_image(tmp_path / "f.tif")
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, data)
    data[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", data)
    with pytest.raises(DataError, match=r"nan.tif has NaN or infinite pixels"):
        read_image(tmp_path / "nan.tif")


def test_tiff_axes_singleton_planar_and_ambiguous(tmp_path):
    one = RNG.integers(0, 4096, (1, 70, 90), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "one.tif", one)  # axes QYX with a singleton Q
    assert read_image(tmp_path / "one.tif").shape == (70, 90)
    planar = RNG.integers(0, 256, (3, 70, 90), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    image = read_image(tmp_path / "planar.tif")
    assert image.shape == (70, 90, 3)
    np.testing.assert_array_equal(image, planar.transpose(1, 2, 0))
    assert probe_channels(tmp_path / "planar.tif") == 3
    # unet-predict's conversion of that file: 3 channels (it used to report 90 channels).
    assert to_input(read_image(tmp_path / "planar.tif"), 3, "planar.tif").shape == (3, 70, 90)
    rgba = RNG.integers(0, 256, (4, 70, 90), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", planarconfig="separate", extrasamples=[2])
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.tif"), rgba[:3].transpose(1, 2, 0))  # alpha dropped
    four = RNG.integers(0, 65536, (4, 70, 90), dtype=np.uint16)  # four channels, marked as such
    tifffile.imwrite(tmp_path / "cyx.tif", four, photometric="minisblack", metadata={"axes": "CYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "cyx.tif"), four.transpose(1, 2, 0))
    tifffile.imwrite(tmp_path / "hyper.tif", four, imagej=True, metadata={"axes": "CYX"})  # ImageJ: 4 pages
    np.testing.assert_array_equal(read_image(tmp_path / "hyper.tif"), four.transpose(1, 2, 0))
    tifffile.imwrite(tmp_path / "pages.tif", four, photometric="minisblack")  # 4 unnamed pages: slices or channels?
    with pytest.raises(DataError, match=r"pages.tif holds \(4, 70, 90\) pixels with axes 'QYX'.*ambiguous.*'CYX'"):
        read_image(tmp_path / "pages.tif")


def test_tiff_yxc_moves_the_channel_axis_last():
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(tiff_yxc(array, "CYX", "x"), array.transpose(1, 2, 0))
    np.testing.assert_array_equal(tiff_yxc(array[None], "TCYX", "x"), array.transpose(1, 2, 0))
    np.testing.assert_array_equal(tiff_yxc(array, "YXS", "x"), array)
    with pytest.raises(DataError, match="expected a 2D image"):
        tiff_yxc(array, "ZCX", "x")


def test_read_stack_gives_slices_first(tmp_path):
    stack = RNG.integers(0, 65536, (5, 12, 14), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = read_stack(tmp_path / "stack.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, stack)
    tifffile.imwrite(tmp_path / "single.tif", stack[0])
    with pytest.raises(DataError, match="expected a stack of 2D slices"):
        read_stack(tmp_path / "single.tif")


def imagej_signed_ct(path: Path, hu: np.ndarray, c0: float = -32768.0) -> None:
    """A CT in HU as ImageJ (Fiji) saves it: uint16 pixels ``HU - c0`` with a straight-line calibration (cf=0).

    ImageJ's signed 16-bit is ``c0 = -32768, c1 = 1``; a DICOM's rescale intercept goes into c0 as well."""
    stored = (hu.astype(np.int64) - int(c0)).astype(np.uint16)
    metadata = {"axes": "ZYX" if hu.ndim == 3 else "YX", "cf": 0, "c0": c0, "c1": 1.0, "vunit": "Gray Value"}
    tifffile.imwrite(path, stored, imagej=True, metadata=metadata)


def test_imagej_signed_16_bit_tiffs_read_as_their_calibrated_values(tmp_path):
    """Fiji's signed 16-bit (a CT in HU) reads as int16 HU on every TIFF path, not as uint16 shifted by 32768."""
    from unet_train.inference.volumes import open_volume

    hu = np.array([[-1024, -1000, 0], [40, 1000, 3071]], dtype=np.int16)
    stack = np.stack([hu, hu + 1, hu - 1])
    imagej_signed_ct(tmp_path / "plane.tif", hu)
    imagej_signed_ct(tmp_path / "stack.tif", stack)
    image = read_image(tmp_path / "plane.tif")
    assert image.dtype == np.int16 and np.array_equal(image, hu)
    assert read_stack(tmp_path / "stack.tif").dtype == np.int16
    assert np.array_equal(read_stack(tmp_path / "stack.tif"), stack)
    volume = open_volume(tmp_path / "stack.tif", None, None, 1)
    assert volume.dtype == np.int16 and np.array_equal(volume.read_block((0, 0, 0), (3, 2, 3))[..., 0], stack)
    assert np.array_equal(volume.read(1, 0, 2, 1, 3)[..., 0], stack[1, :, 1:])
    # another straight line (a DICOM's rescale intercept in c0): float32 values, as a scaled NIfTI reads
    imagej_signed_ct(tmp_path / "rescaled.tif", stack + 1, c0=-1024.0)  # stored from 0
    volume = open_volume(tmp_path / "rescaled.tif", None, None, 1)
    assert volume.dtype == np.float32 and np.array_equal(volume.read_block((0, 0, 0), (3, 2, 3))[..., 0], stack + 1)
    assert read_stack(tmp_path / "rescaled.tif").dtype == np.float32
    assert np.array_equal(read_stack(tmp_path / "rescaled.tif"), stack + 1)
    imagej_signed_ct(tmp_path / "labels.tif", np.array([[0, 1], [2, 0]], dtype=np.int16))  # drawn in Fiji on a CT
    assert read_mask(tmp_path / "labels.tif").tolist() == [[0, 1], [2, 0]]


def test_masks_palette_indices_grey_alpha_and_colour_refused(tmp_path):
    indices = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])  # LabelMe/VOC colours
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), indices)  # the stored indices, not colours
    Image.fromarray(np.stack([indices, np.full_like(indices, 255)], -1), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "la.png"), indices)
    Image.fromarray(np.repeat(indices[..., None] * 100, 3, axis=2)).save(tmp_path / "greyrgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "greyrgb.png"), indices * 100)  # equal channels: grey
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 1] = (255, 0, 0)
    colour[1, 2] = (0, 255, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"Mask .*colour.png is a colour image \(3 colours\); masks must store class"):
        read_mask(tmp_path / "colour.png")
    big = RNG.integers(0, 4, (1, 6, 7), dtype=np.uint16)  # (1, H, W): the singleton axis goes
    tifffile.imwrite(tmp_path / "m.tif", big)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), big[0])
    tifffile.imwrite(tmp_path / "half.tif", np.full((2, 2), 0.5, np.float32))
    with pytest.raises(DataError, match="non-integer values"):
        read_mask(tmp_path / "half.tif")


@pytest.mark.skipif(not USGRA.is_dir(), reason=f"usgra-seg not found at {USGRA}")
def test_every_usgra_seg_mask_reads_as_indices():
    masks = sorted(USGRA.glob("masks/*.png")) + sorted(USGRA.glob("test/masks/*.png"))
    assert len(masks) == 244
    values: set[int] = set()
    for path in masks:
        mask = read_mask(path)
        assert mask.ndim == 2 and mask.dtype == np.uint8, path
        values.update(np.unique(mask).tolist())
    assert values == {0, 1, 2}


def test_match_channels_grey_to_rgb_and_rgb_to_grey():
    grey = RNG.integers(0, 65536, (4, 5), dtype=np.uint16)
    rgb = match_channels(grey, 3, "g")
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint16 and all((rgb[..., c] == grey).all() for c in range(3))
    colour = RNG.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    luma = match_channels(colour, 1, "c")
    assert luma.dtype == np.uint16
    np.testing.assert_array_equal(luma, np.round(colour.astype(np.float64) @ [0.299, 0.587, 0.114]))
    floats = colour.astype(np.float32)
    np.testing.assert_allclose(match_channels(floats, 1, "f"), floats @ np.float32([0.299, 0.587, 0.114]), rtol=1e-6)
    with pytest.raises(DataError, match=r"c has 3 channel\(s\) but data.in_channels=4"):
        match_channels(colour, 4, "c")
