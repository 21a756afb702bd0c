"""Hostile and broken input files: pixel bombs, sparse giants, truncated TIFFs, malformed OME-Zarr, NaN pixels.

Each is refused in one line naming the file, with exit status 2 and nothing written; the bombs are run
under an address-space limit, so a reader that decodes before it checks fails the test instead of the machine.
"""

from __future__ import annotations

import logging
import re
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_train.data.limits import available_memory, max_pixels, set_max_pixels
from unet_train.data.reading import read_image, read_mask, read_stack
from unet_train.errors import ConfigError, DataError
from unet_train.inference.volumes import open_volume
from unet_train.overrides import hold_resume_overrides, resume_overrides
from unet_train.predict import run_predict

from .conftest import compose_config

zarr = pytest.importorskip("zarr")
h5py = pytest.importorskip("h5py")

BIN = Path(sys.executable).parent
ADDRESS_SPACE = 4 * 2**30  # the bombs' 10 GB cannot be allocated under it; torch and a tiny model fit
FIX_NAN = "fix the file, or predict it with allow_nonfinite=true (they are then read as 0)."


@pytest.fixture(autouse=True)
def default_limit():
    """Every test starts and ends with the limit derived from memory (it is process-wide, as the commands set it)."""
    set_max_pixels(None)
    yield
    set_max_pixels(None)


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A PNG of a few hundred bytes whose header declares ``side`` x ``side`` grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (side + 1) * 4)  # four rows of the picture; the rest is missing
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def sparse_tiff(path: Path, side: int = 100_000, tile: int = 4096) -> Path:
    """A 5 kB tiled TIFF of ``side`` x ``side`` uint8 pixels whose tiles are all empty (offset and size 0)."""
    tiles = (-(-side // tile)) ** 2
    tags = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (277, 3, 1), (284, 3, 1)]
    tags += [(322, 4, tile), (323, 4, tile)]
    arrays = 8 + 2 + 12 * (len(tags) + 2) + 4
    out = bytearray(b"II*\0" + struct.pack("<IH", 8, len(tags) + 2))
    for tag, kind, value in tags:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)  # SHORT or LONG
        out += struct.pack("<HHI", tag, kind, 1) + packed
    out += struct.pack("<HHII", 324, 4, tiles, arrays) + struct.pack("<HHII", 325, 4, tiles, arrays + 4 * tiles)
    path.write_bytes(bytes(out + struct.pack("<I", 0) + bytes(8 * tiles)))
    return path


def limited(seconds: float = 120) -> dict:
    """subprocess.run arguments: an address-space limit in the child, its output as text, a timeout."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return {"preexec_fn": limit, "capture_output": True, "text": True, "timeout": seconds}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line or "Traceback" in line]


@pytest.mark.slow  # a console script in a subprocess
@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_bombs_are_refused_on_their_header_under_an_address_space_limit(tiny_ckpt, tmp_path, kind):
    """A 467-byte PNG and a 5 kB sparse TIFF, both 100000 x 100000: one line from the header, no allocation."""
    source = png_bomb(tmp_path / "bomb.png") if kind == "png" else sparse_tiff(tmp_path / "huge.tif")
    out = tmp_path / "out"
    start = time.monotonic()
    result = subprocess.run(
        [str(BIN / "unet-predict"), f"ckpt={tiny_ckpt}", f"input={source}", f"output={out}"], cwd=tmp_path, **limited()
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    chunked = "predict it chunk by chunk into output=NAME.zarr, or " if kind == "tiff" else ""
    match = re.search(
        rf"- {re.escape(str(source))} is 100000 x 100000 x 1 = 10,000,000,000 pixel values, more than can be read "
        rf"whole \(([\d,]+): 1/32 of the ([\d.]+) GiB of free memory\); {re.escape(chunked)}crop or tile the file, "
        r"or raise the limit with max_pixels=10000000000\.$",
        lines[0],
    )
    assert match, lines[0]
    # The free memory is what the address-space limit leaves, not the machine's.
    assert float(match[2]) < ADDRESS_SPACE / 2**30
    assert int(match[1].replace(",", "")) < ADDRESS_SPACE // 32
    assert not out.exists()
    assert elapsed < 60  # start-up and loading the model; the refusal itself reads a header


@pytest.mark.slow  # a console script in a subprocess
def test_unet_eval_refuses_a_bomb_in_its_data_folder(tiny_ckpt, tmp_path):
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "masks" / "a.png")
    png_bomb(root / "images" / "a.png")
    args = [str(BIN / "unet-eval"), f"ckpt={tiny_ckpt}", "data=folder", f"data.root={root}", "split=all"]
    result = subprocess.run(args, cwd=tmp_path, **limited())
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"{root / 'images' / 'a.png'} is 100000 x 100000 x 1 = " in lines[0], lines


def test_max_pixels_caps_every_whole_image_reader_before_decoding(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "rgb.jpg")
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([grey] * 3), photometric="minisblack")
    set_max_pixels(2000)
    assert read_image(tmp_path / "grey.png").shape == (40, 50)  # 2000 values: at the limit
    assert read_mask(tmp_path / "grey.tif").shape == (40, 50)
    for reader, name, size in (
        (read_image, "rgb.jpg", "40 x 50 x 3 = 6,000"),
        (read_stack, "stack.tif", "3 x 40 x 50 = 6,000"),
    ):
        with pytest.raises(DataError) as info:
            reader(tmp_path / name)
        assert str(info.value) == (
            f"{tmp_path / name} is {size} pixel values, more than can be read whole (2,000: max_pixels=2000); "
            "crop or tile the file, or raise the limit with max_pixels=6000."
        )
    set_max_pixels(1999)
    with pytest.raises(DataError, match=r"grey.png is 40 x 50 x 1 = 2,000 pixel values"):
        read_image(tmp_path / "grey.png")


def test_the_default_limit_is_a_share_of_the_free_memory(monkeypatch):
    monkeypatch.setattr("unet_train.data.limits.available_memory", lambda: 2**30)
    assert max_pixels() == (2**30 // 32, "1/32 of the 1.0 GiB of free memory")
    set_max_pixels(123)
    assert max_pixels() == (123, "max_pixels=123")
    set_max_pixels(1e10)  # as a user may type it
    assert max_pixels() == (10**10, "max_pixels=10000000000")
    for bad in (0, -5, "many", True, 1.5):
        with pytest.raises(
            ConfigError, match=r"must be a positive whole number of pixel values \(1e10 works\), or null"
        ):
            set_max_pixels(bad)  # type: ignore[arg-type]
    assert available_memory() > 0


# Malformed OME-NGFF multiscales: what the attributes hold, and the fault named.
MALFORMED = {
    "multiscales a string": ("abc", "multiscales must be a list of images (objects), found 'abc'"),
    "multiscales an object": (
        {"datasets": []},
        "multiscales must be a list of images (objects), found {'datasets': []}",
    ),
    "no datasets": ([{"axes": ["y", "x"]}], "multiscales[0].datasets must be a non-empty list of levels, found None"),
    "a level without a path": (
        [{"datasets": [{"nopath": 1}]}],
        "each level of multiscales[0].datasets must be {\"path\": ARRAY, ...}, found {'nopath': 1}",
    ),
    "axes of numbers": (
        [{"axes": [1, 2], "datasets": [{"path": "0"}]}],
        'multiscales[0].axes must be a list of names or {"name": ...} objects, found [1, 2]',
    ),
    "a scale of text": (
        [{"datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": "x"}]}]}],
        "a scale transformation's scale must be a list of numbers, found 'x'",
    ),
}


def ome_store(path: Path, multiscales: object) -> Path:
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=(64, 64), chunks=(32, 32), dtype="uint8")[...] = 7
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    return path


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_ome_zarr_metadata_is_named(tmp_path, case):
    multiscales, fault = MALFORMED[case]
    store = ome_store(tmp_path / "bad.zarr", multiscales)
    with pytest.raises(DataError) as info:
        open_volume(store, None, None, 1)
    assert str(info.value) == (
        f"OME-Zarr {store} has malformed metadata: {fault}; fix the multiscales in its zarr.json (.zattrs in Zarr "
        "v2) as the OME-NGFF specification describes."
    )


def predict(ckpt: Path, source: Path, out: Path, *extra: str) -> None:
    """unet-predict in this process, with 64 px tiles and chunks."""
    settings = ["tile_size=64", "chunk_size=64", "progress=never", "prob_dtype=float32", *extra]
    run_predict(compose_config([f"ckpt={ckpt}", f"input={source}", f"output={out}", *settings], config_name="predict"))


def predict_fails(ckpt: Path, source: Path, out: Path, caplog) -> str:
    """Run unet-predict in this process; it must exit 2 with one error line and write nothing. Returns the line."""
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as info:
        predict(ckpt, source, out)
    assert info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert not out.exists(), sorted(out.rglob("*"))
    return errors[0]


def test_broken_files_get_one_line_and_write_nothing(tiny_ckpt, tmp_path, caplog):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    line = predict_fails(tiny_ckpt, truncated, tmp_path / "out", caplog)
    assert line.startswith(f"Could not read {truncated} (z=0, y=0:64, x=0:64): corrupted strip"), line
    for name, expected in (
        ("empty.tif", "Could not read TIFF {}: not a TIFF file: header=b''"),
        ("empty.png", "Could not read image {}: cannot identify image file '{}'"),
    ):
        (tmp_path / name).write_bytes(b"")
        assert predict_fails(tiny_ckpt, tmp_path / name, tmp_path / "out", caplog) == expected.format(
            tmp_path / name, tmp_path / name
        )
    no_pages = tmp_path / "no_pages.tif"
    no_pages.write_bytes(b"II*\0" + b"\xff" * 40)
    line = predict_fails(tiny_ckpt, no_pages, tmp_path / "out", caplog)
    assert line == f"Could not read TIFF {no_pages}: it holds no image (no readable page)."
    store = ome_store(tmp_path / "ome.zarr", "abc")
    line = predict_fails(tiny_ckpt, store, tmp_path / "out", caplog)
    assert line.startswith(f"OME-Zarr {store} has malformed metadata: multiscales must be a list"), line


def nan_image() -> np.ndarray:
    """A 300 x 300 float image with a 26 x 26 NaN block near its far corner: read in the last chunks."""
    image = np.random.default_rng(1).random((300, 300)).astype(np.float32)
    image[250:276, 251:277] = np.nan
    return image


def test_nan_pixels_are_refused_on_every_predict_input_path(tiny_ckpt, tmp_path, caplog):
    image = nan_image()
    first = "(the first, nan, at y=250, x=251); " + FIX_NAN
    tifffile.imwrite(tmp_path / "in_memory.tif", image)
    tifffile.imwrite(tmp_path / "tiled.tif", image, tile=(64, 64))
    zarr.create_array(str(tmp_path / "chunks.zarr"), shape=image.shape, chunks=(64, 64), dtype="float32")[...] = image
    with h5py.File(tmp_path / "data.h5", "w") as handle:
        handle.create_dataset("raw", data=image, chunks=(64, 64))
    cases = [
        ("in_memory.tif", "out", f"{tmp_path / 'in_memory.tif'} has NaN or infinite pixels {first}"),
        ("tiled.tif", "out.zarr", f"{tmp_path / 'tiled.tif'} has NaN or infinite pixels {first}"),  # window by window
        ("chunks.zarr", "out", f"{tmp_path / 'chunks.zarr'} has NaN or infinite pixels {first}"),
        ("data.h5", "out", f"{tmp_path / 'data.h5'}:raw has NaN or infinite pixels {first}"),
    ]
    for name, out, expected in cases:
        assert predict_fails(tiny_ckpt, tmp_path / name, tmp_path / out, caplog) == expected
    # A stack whose last slice holds an inf: the slices written before it are removed again.
    stack = np.stack([image[:64, :64]] * 3)
    stack[2, 5, 7] = np.inf
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    line = predict_fails(tiny_ckpt, tmp_path / "stack.tif", tmp_path / "out", caplog)
    assert line == f"{tmp_path / 'stack.tif'} has NaN or infinite pixels (the first, inf, at z=2, y=5, x=7); {FIX_NAN}"


def test_allow_nonfinite_predicts_them_as_zeros(tiny_ckpt, tmp_path, caplog):
    image = nan_image()
    tifffile.imwrite(tmp_path / "nan.tif", image)
    tifffile.imwrite(tmp_path / "zero.tif", np.nan_to_num(image, nan=0.0))
    zarr.create_array(str(tmp_path / "nan.zarr"), shape=image.shape, chunks=(64, 64), dtype="float32")[...] = image
    predict(tiny_ckpt, tmp_path / "zero.tif", tmp_path / "zero")
    with caplog.at_level(logging.WARNING):
        predict(tiny_ckpt, tmp_path / "nan.tif", tmp_path / "nan", "allow_nonfinite=true")
    expected = tifffile.imread(tmp_path / "zero" / "zero_prob.tif")
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nan" / "nan_prob.tif"), expected)
    assert (
        f"{tmp_path / 'nan.tif'} has NaN or infinite pixels; they are read as 0 (allow_nonfinite=true)" in caplog.text
    )
    predict(tiny_ckpt, tmp_path / "nan.zarr", tmp_path / "out.zarr", "allow_nonfinite=true")
    chunked = np.asarray(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"])
    np.testing.assert_allclose(chunked, expected, atol=1e-5)


def test_max_pixels_is_the_commands_own_on_a_resume(monkeypatch):
    """On ``unet-train ckpt=...`` the limit stays with this command (as trust_config), not the checkpoint's config."""
    monkeypatch.delenv("UNET_TRAIN_RESUME_OVERRIDES", raising=False)
    argv = hold_resume_overrides(["unet-train", "ckpt=run/last.pt", "max_pixels=1e10", "optim.lr=0.1"])
    assert argv == ["unet-train", "ckpt=run/last.pt", "max_pixels=1e10"]
    assert resume_overrides() == ["optim.lr=0.1"]
    for name in ("train", "eval", "plan", "predict"):  # every command that reads images has the key
        assert compose_config(["max_pixels=1e10"], config_name=name).max_pixels == 1e10


def test_allow_nonfinite_reads_them_as_zeros_in_a_volume_predicted_whole_and_by_chunks(tmp_path, caplog):
    """A float CT (HU) NIfTI with NaN voxels, predicted by a 3D model: whole and into OME-Zarr, as its zeroed copy."""
    nibabel = pytest.importorskip("nibabel")
    from .export.conftest import make_volume_checkpoint

    ckpt = make_volume_checkpoint(tmp_path / "tiny3d.pt", tmp_path, ["data.normalize.gain=0.001"])  # HU to ~[-1, 1.5]
    hu = np.random.default_rng(0).uniform(-1024, 1500, (8, 16, 16)).astype(np.float32)
    hu[3, 4:6, 5] = np.nan
    for name, volume in (("nan", hu), ("zero", np.nan_to_num(hu, nan=0.0))):
        nibabel.save(nibabel.Nifti1Image(volume.transpose(2, 1, 0), np.eye(4)), tmp_path / f"{name}.nii.gz")
    line = predict_fails(ckpt, tmp_path / "nan.nii.gz", tmp_path / "refused", caplog)
    assert line == f"{tmp_path / 'nan.nii.gz'} has NaN or infinite pixels (the first, nan, at z=3, y=4, x=5); {FIX_NAN}"
    settings = ("tile_size=[8,16,16]", "allow_nonfinite=true", "trainer.channels_last=false")
    predict(ckpt, tmp_path / "zero.nii.gz", tmp_path / "zero", *settings)
    expected = np.asarray(nibabel.load(tmp_path / "zero" / "zero_prob.nii.gz").dataobj)
    assert np.isfinite(expected).all()
    with caplog.at_level(logging.WARNING):
        predict(ckpt, tmp_path / "nan.nii.gz", tmp_path / "nan", *settings)
        predict(ckpt, tmp_path / "nan.nii.gz", tmp_path / "nan.zarr", *settings)
    np.testing.assert_array_equal(np.asarray(nibabel.load(tmp_path / "nan" / "nan_prob.nii.gz").dataobj), expected)
    chunked = np.asarray(zarr.open_group(str(tmp_path / "nan.zarr"), mode="r")["0"])
    np.testing.assert_allclose(chunked, expected.transpose(2, 1, 0), atol=1e-5)
    assert f"{tmp_path / 'nan.nii.gz'} has NaN or infinite pixels; they are read as 0 (allow_nonfinite=true)" in (
        caplog.text
    )
