"""A volume's header may declare any size: what is read whole (a mask plane when scanned, a validation or
predicted volume) is refused by ``max_pixels`` before a pixel is decoded; training crops stay lazy."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unet_train.data.limits import set_max_pixels
from unet_train.data.volumes import VolumeFolder
from unet_train.errors import DataError
from unet_train.inference.volumes import open_volume
from unet_train.volume_predict import model_input

zarr = pytest.importorskip("zarr")


@pytest.fixture(autouse=True)
def _limit():
    set_max_pixels(1e7)
    yield
    set_max_pixels(None)


def declared(root: Path, shape: tuple[int, ...], count: int = 3) -> Path:
    """``count`` empty Zarr image/mask pairs that declare ``shape`` (a few bytes on disk, no chunk written)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for i in range(count):
            zarr.create_array(str(root / sub / f"v{i}.zarr"), shape=shape, chunks=(1, 64, 64), dtype="uint8")
    return root


def folder(root: Path, **kwargs) -> VolumeFolder:
    return VolumeFolder(root=str(root), patch_size=[2, 16, 16], num_workers=0, val_fraction=0.4, **kwargs)


@pytest.mark.parametrize("auto", [True, False])
def test_a_declared_plane_over_max_pixels_is_refused_before_the_mask_is_scanned(tmp_path, auto):
    root = declared(tmp_path, (2, 200_000, 200_000))
    data = folder(root, in_channels="auto" if auto else 1, num_classes="auto" if auto else 2)
    with pytest.raises(DataError, match=r"200000 x 200000 = 40,000,000,000 pixel values.*max_pixels="):
        data.resolve_auto() if auto else data.split("train")


def test_a_validation_volume_over_max_pixels_is_refused_but_training_crops_are_read(tmp_path):
    root = declared(tmp_path, (4_000, 64, 64))  # 16 M voxels, planes of 4096
    data = folder(root, in_channels=1, num_classes=2)
    assert len(data.split("train")) == 2  # crops: no whole read
    with pytest.raises(DataError, match=r"4000 x 64 x 64 x 1 = 16,384,000 pixel values.*max_pixels="):
        data.split("val")


def test_predicting_a_volume_over_max_pixels_is_refused_before_it_is_read(tmp_path):
    root = declared(tmp_path, (4_000, 64, 64), count=1)
    volume = open_volume(root / "images" / "v0.zarr", None, None, 1)
    with pytest.raises(DataError, match=r"= 16,384,000 pixel values.*a 3D model predicts each volume whole"):
        model_input(volume, [OmegaConf.create({"in_channels": 1, "normalize": None})])
