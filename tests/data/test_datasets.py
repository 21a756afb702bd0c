"""Datasets: ISBI reading, splits and download; folder pairing and errors; synthetic determinism."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from skimage import io as skio

from unet_train.data import ISBI2012, ImageFolder, SyntheticMembranes
from unet_train.data.isbi import FILES, PIXEL_SHA256, pixel_sha256
from unet_train.errors import ConfigError, DataError


def test_isbi_splits_and_membrane_foreground(isbi_root):
    data = ISBI2012(root=str(isbi_root), num_workers=0)
    train, val = data.split("train"), data.split("val")
    assert (len(train), len(val)) == (25, 5)
    assert val.names == [f"train-{i:02d}" for i in range(25, 30)]
    labels = tifffile.imread(isbi_root / "train-labels.tif")
    np.testing.assert_array_equal(val.masks[0], (labels[25] == 0).astype(np.uint8))
    assert 0.15 < np.mean([m.mean() for m in val.masks]) < 0.3  # membranes are about 22 % of pixels
    test = data.split("test")
    assert len(test) == 30 and test.masks is None
    item = data.dataset("train")[0]
    assert item["image"].shape == (1, 512, 512) and item["image"].dtype == torch.float32  # no transform: whole slice
    assert item["mask"].shape == (512, 512) and set(item["mask"].unique().tolist()) <= {0, 1}


def test_isbi_kfold(isbi_root):
    data = ISBI2012(root=str(isbi_root), fold=1, num_folds=5, num_workers=0)
    assert data.split("val").names == [f"train-{i:02d}" for i in range(6, 12)]
    assert len(data.split("train")) == 24


def test_isbi_missing_files_say_where_and_how(tmp_path):
    data = ISBI2012(root=str(tmp_path), num_workers=0)
    with pytest.raises(DataError, match=rf"train-volume.tif not found in {tmp_path}.*data.download=true"):
        data.split("train")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/{{name}}"
    server.shutdown()


def test_download_accepts_good_copy_and_caches_it(isbi_root, file_server, tmp_path):
    served, url = file_server
    for name in FILES:
        shutil.copy(isbi_root / name, served / name)
    cache = tmp_path / "cache"
    data = ISBI2012(root=str(cache), download=True, urls=[url], num_workers=0)
    assert len(data.split("val")) == 5
    for name in FILES:
        assert pixel_sha256(tifffile.imread(cache / name)) == PIXEL_SHA256[name]
    (served / "train-volume.tif").unlink()  # a second use reads the cache, not the server
    assert len(ISBI2012(root=str(cache), download=True, urls=[url], num_workers=0).split("train")) == 25


def test_download_refuses_corrupt_copy_and_keeps_nothing(isbi_root, file_server, tmp_path):
    served, url = file_server
    for name in FILES:
        shutil.copy(isbi_root / name, served / name)
    stack = tifffile.imread(served / "train-volume.tif")
    stack[0, 0, 0] ^= 1  # one flipped bit in the pixels
    tifffile.imwrite(served / "train-volume.tif", stack)
    cache = tmp_path / "cache"
    data = ISBI2012(root=str(cache), download=True, urls=[url], num_workers=0)
    with pytest.raises(DataError, match="checksum mismatch for train-volume.tif"):
        data.split("train")
    assert not (cache / "train-volume.tif").exists()
    assert not any(p.name.startswith(".train-volume") for p in cache.iterdir())  # no partial file left


def write_folder(root: Path, n: int = 5, size: tuple[int, int] = (40, 48), rgb: bool = False) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        shape = (*size, 3) if rgb else size
        skio.imsave(root / "images" / f"img{i}.png", rng.integers(0, 255, shape, dtype=np.uint8), check_contrast=False)
        mask = np.zeros(size, dtype=np.uint8)
        mask[5:20, 5:20] = 255
        skio.imsave(root / "masks" / f"img{i}.png", mask, check_contrast=False)


def test_folder_pairs_by_stem_and_splits(tmp_path):
    write_folder(tmp_path, n=5, rgb=True)
    data = ImageFolder(root=str(tmp_path), val_fraction=0.4, in_channels=3, num_workers=0)
    train, val = data.split("train"), data.split("val")
    assert len(train) == 3 and len(val) == 2 and not set(train.names) & set(val.names)
    assert set(np.unique(train.masks[0]).tolist()) == {0, 1}  # {0, 255} -> {0, 1}
    item = data.dataset("val")[0]
    assert item["image"].shape == (3, 40, 48)


def test_folder_errors_name_the_file(tmp_path):
    write_folder(tmp_path, n=3)
    (tmp_path / "masks" / "img2.png").rename(tmp_path / "masks" / "other.png")
    with pytest.raises(DataError, match="images without a mask: img2; masks without an image: other"):
        ImageFolder(root=str(tmp_path), num_workers=0).split("train")

    (tmp_path / "masks" / "other.png").unlink()
    skio.imsave(tmp_path / "masks" / "img2.png", np.full((10, 10), 255, np.uint8), check_contrast=False)
    with pytest.raises(DataError, match=r"img2.png is \(10, 10\) but its image is \(40, 48\)"):
        ImageFolder(root=str(tmp_path), num_workers=0).split("all")

    skio.imsave(tmp_path / "masks" / "img2.png", np.full((40, 48), 7, np.uint8), check_contrast=False)
    with pytest.raises(DataError, match=r"img2.png has values \[7\]"):
        ImageFolder(root=str(tmp_path), num_workers=0).split("all")

    (tmp_path / "images" / "img1.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="Could not read image .*img1.png"):
        ImageFolder(root=str(tmp_path), num_workers=0).split("all")


def test_folder_missing_root_and_channel_mismatch(tmp_path):
    with pytest.raises(DataError, match="images does not exist"):
        ImageFolder(root=str(tmp_path / "nowhere"), num_workers=0).split("train")
    write_folder(tmp_path, n=3, rgb=True)
    # RGB with data.in_channels=1 becomes grey by luminance; 2-channel images convert to nothing.
    grey = ImageFolder(root=str(tmp_path), in_channels=1, num_workers=0).split("all").images[0]
    rgb = skio.imread(tmp_path / "images" / "img0.png").astype(np.float64)
    assert grey.dtype == np.uint8  # kept as uint8: scale_linear divides by 255 when it becomes a tensor
    np.testing.assert_array_equal(grey, np.round(rgb @ [0.299, 0.587, 0.114]))
    tifffile.imwrite(tmp_path / "images" / "img1.tif", np.zeros((40, 48, 2), np.uint16), photometric="minisblack",
                     planarconfig="contig")  # fmt: skip
    (tmp_path / "images" / "img1.png").unlink()
    with pytest.raises(DataError, match=r"img1.tif has 2 channel\(s\) but data.in_channels=3; only grey \(1\) and RGB"):
        ImageFolder(root=str(tmp_path), in_channels=3, num_workers=0).split("all")


def test_patch_larger_than_images_is_a_config_error(tmp_path):
    write_folder(tmp_path, n=3)
    data = ImageFolder(root=str(tmp_path), patch_size=64, num_workers=0, train_transform=lambda **kw: kw)
    with pytest.raises(ConfigError, match="data.patch_size=64 is larger than the smallest training image"):
        data.split("train")


def test_synthetic_is_reproducible_and_binary():
    a = SyntheticMembranes(image_size=64, num_train=3, seed=5, num_workers=0).split("train")
    b = SyntheticMembranes(image_size=64, num_train=3, seed=5, num_workers=0).split("train")
    c = SyntheticMembranes(image_size=64, num_train=3, seed=6, num_workers=0).split("train")
    np.testing.assert_array_equal(a.images[0], b.images[0])
    assert not np.array_equal(a.images[0], c.images[0])
    assert set(np.unique(a.masks[0]).tolist()) == {0, 1}
    # Membranes are darker than cell interiors, as in EM.
    assert a.images[0][a.masks[0] == 1].mean() < a.images[0][a.masks[0] == 0].mean() - 40


def test_read_only_arrays_become_tensors_without_a_warning():
    """Arrays read from files (``np.asarray`` of a PIL image) are read-only: torch warned once per item."""
    import warnings

    from unet_train.data.base import SegmentationDataset, Split

    image, mask = np.arange(16, dtype=np.float32).reshape(4, 4), np.eye(4, dtype=np.int64)
    image.flags.writeable = mask.flags.writeable = False
    dataset = SegmentationDataset(Split([image], [mask], ["a"]), transform=None, sample_weight=lambda m: m * 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        item = dataset[0]
    item["image"] += 1  # its own memory: the split's array is unchanged
    assert image[0, 1] == 1.0 and item["image"][0, 0, 1] == 2.0
    assert item["mask"].tolist() == np.eye(4).tolist() and item["weight"][1, 1] == 2.0
