"""data=volumes: a folder of 3D volumes read lazily in random crops, scaled per volume, augmented in 3D."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
import torch

from unet_train.data.augment3d import IntensityJitter, RandomAxisSwap, RandomFlip3D, RandomRotate90InPlane
from unet_train.data.volume_data import VolumeCase, VolumeDataset, crop_origin, patch_shape
from unet_train.data.volumes import VolumeFolder, volume_stem
from unet_train.errors import ConfigError, DataError
from unet_train.inference.volumes import Volume
from unet_train.labels import IGNORE_INDEX
from unet_train.models.anisotropy import pool_factors_for_spacing

from ..conftest import compose_config
from .volume_folder import SPACING, ball_volume, make_volume_folder, write_tiff


def folder(root, **kwargs):
    return VolumeFolder(root=str(root), **{"num_workers": 0, "patch_size": [4, 16, 16], **kwargs})


def array_case(image: np.ndarray, mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> VolumeCase:
    case = VolumeCase(Volume(image, "zyx", "img"), Volume(mask, "zyx", "mask"), "case", spacing)
    case.spec = {"scheme": "scale_linear", "gain": None, "offset": 0.0}
    case.scan()
    return case


# -- pooling from the spacing -------------------------------------------------------------------


def test_pool_factors_leave_a_thick_axis_alone_until_it_is_comparable():
    # ISBI 2012: 50 nm sections, 4 nm pixels: z pooled only once y, x are 32 nm (50 <= 2 x 32)
    factors, reasons = pool_factors_for_spacing([50, 4, 4], [16, 256, 256], 4)
    assert factors == [[1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert reasons[0] == "z at pooling 0: voxel side 50 > 2x the finest 4"
    # isotropic, but only 8 planes: z stops once the patch would keep fewer than 4
    factors, reasons = pool_factors_for_spacing([1, 1, 1], [8, 32, 32], 3)
    assert factors == [[2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert reasons == [
        "z at pooling 1: the patch would keep 2 < 4 voxels",
        "z at pooling 2: the patch would keep 2 < 4 voxels",
    ]


def test_patch_size_forms():
    assert patch_shape(16) == (16, 16, 16) and patch_shape([4, 32, 48]) == (4, 32, 48)
    with pytest.raises(ConfigError, match=r"data.patch_size=\[4, 0, 8\] must be a positive int or three"):
        patch_shape([4, 0, 8])


# -- 3D transforms ------------------------------------------------------------------------------


def coordinates(shape=(4, 4, 4)) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (100 * z + 10 * y + x).astype(np.float32)


def test_flips_and_rotations_move_image_and_mask_together():
    image = coordinates((2, 4, 4))
    mask = image.astype(np.int64)
    for transform in (RandomFlip3D(p=1.0), RandomRotate90InPlane(p=1.0)):
        out, out_mask = transform(image[..., None], mask, np.random.default_rng(3), (1.0, 1.0, 1.0))
        assert out.shape == (2, 4, 4, 1) and np.array_equal(out[..., 0], out_mask)
    flipped, _ = RandomFlip3D(axes=[0], p=1.0)(image[..., None], None, np.random.default_rng(0), (1, 1, 1))
    assert flipped[0, 1, 2, 0] == 112  # z 0 <- z 1
    # a non-square plane is turned by 180 degrees only, so the crop keeps its shape
    wide = coordinates((2, 4, 6))
    turned, _ = RandomRotate90InPlane(p=1.0)(wide[..., None], None, np.random.default_rng(0), (1, 1, 1))
    assert np.array_equal(turned[..., 0], wide[:, ::-1, ::-1])


def test_axis_swaps_only_between_axes_of_comparable_spacing():
    image = coordinates()[..., None]
    swapped = [
        RandomAxisSwap(p=1.0)(image, None, np.random.default_rng(seed), (4.0, 1.0, 1.0))[0] for seed in range(20)
    ]
    assert all(np.array_equal(s[..., 0], image[..., 0].swapaxes(1, 2)) for s in swapped)  # z never moves
    isotropic = {
        RandomAxisSwap(p=1.0)(image, None, np.random.default_rng(seed), (1.0, 1.0, 1.0))[0][1, 0, 0, 0]
        for seed in range(30)
    }
    assert isotropic == {100.0, 10.0, 1.0}  # voxel (1,0,0) after a y<->x, z<->y or z<->x swap


def test_intensity_jitter_keeps_the_mask_and_shifts_by_the_crops_contrast():
    image = coordinates()[..., None]
    out, mask = IntensityJitter(brightness=0.0, contrast=0.5, p=1.0)(image, "m", np.random.default_rng(0), (1, 1, 1))
    gain = out.ravel()[1] / image.ravel()[1]
    assert mask == "m" and 0.5 <= gain <= 1.5 and np.allclose(out, image * gain, rtol=1e-5)


# -- crops --------------------------------------------------------------------------------------


def test_foreground_oversampling_puts_a_small_object_in_every_crop():
    mask = np.zeros((16, 64, 64), dtype=np.uint8)
    mask[10:12, 40:43, 5:8] = 1  # 18 of 65536 voxels
    case = array_case(np.zeros_like(mask), mask)
    rng = np.random.default_rng(0)
    size = (4, 16, 16)

    def share(p: float) -> float:
        hits = 0
        for _ in range(200):
            z, y, x = crop_origin(case, size, rng, p)
            hits += bool(mask[z : z + 4, y : y + 16, x : x + 16].any())
        return hits / 200

    assert share(1.0) == 1.0
    assert share(0.0) < 0.2  # uniform crops: about (5/13) * (18/49) * (18/49) = 0.05
    assert 0.4 < share(0.5) < 0.65


def test_crops_follow_the_item_seed_and_scale_per_volume(tmp_path):
    """A crop of a zscore-per-image volume is scaled by the whole volume's statistics, not the crop's own."""
    image = np.arange(8 * 16 * 16, dtype=np.float32).reshape(8, 16, 16)
    mask = (image % 7 == 0).astype(np.uint8)
    case = array_case(image, mask)
    data_spec = {"scheme": "zscore", "per": "image"}
    from unet_train.data.volume_data import volume_spec

    case.spec = volume_spec(case.image, data_spec)
    dataset = VolumeDataset([case], (4, 8, 8))
    a, b = dataset[(0, 123)], dataset[(0, 123)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["image"].shape == (1, 4, 8, 8) and a["mask"].shape == (4, 8, 8) and a["mask"].dtype == torch.int64
    raw = (a["image"][0].numpy() * image.std()) + image.mean()  # undo the volume's z-score
    z, y, x = (int(v) for v in np.argwhere(np.isclose(image, raw[0, 0, 0], atol=0.5))[0])
    assert np.allclose(raw, image[z : z + 4, y : y + 8, x : x + 8], atol=1e-2)
    assert np.array_equal(a["mask"].numpy(), mask[z : z + 4, y : y + 8, x : x + 8])
    whole = VolumeDataset([case])[0]
    assert whole["image"].shape == (1, 8, 16, 16)


# -- the folder ---------------------------------------------------------------------------------


def test_folder_reads_spacing_classes_and_splits(tmp_path):
    root = make_volume_folder(tmp_path, count=5)
    data = folder(root)
    assert (data.in_channels, data.num_classes) == (1, 2)
    assert data.spacing == pytest.approx(SPACING, rel=1e-4)
    train, val = data.split("train"), data.split("val")
    assert len(train) == 4 and len(val) == 1 and not set(train.names) & set(val.names)
    item = data.dataset("train")[(0, 5)]
    assert item["image"].shape == (1, 4, 16, 16) and set(item["mask"].unique().tolist()) <= {0, 1}
    whole = data.dataset("val")[0]
    expected = ball_volume(int(val.names[0][3:]))[1] // 255
    assert np.array_equal(whole["mask"].numpy(), expected)  # {0, 255} read as {0, 1}
    assert data.split("test").masks is None and data.split("test").names == ["test0"]
    assert folder(root, spacing=[3, 1, 1]).spacing == (3.0, 1.0, 1.0)


def test_folder_of_nifti_hdf5_and_zarr_volumes_reads_crops_from_the_files(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    h5py = pytest.importorskip("h5py")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    volumes = {}
    zarr = pytest.importorskip("zarr")
    for i, kind in enumerate(["nii", "h5", "zarr"]):
        image, mask = ball_volume(i)
        volumes[f"v{i}"] = (image, mask)
        if kind == "nii":  # NIfTI stores (x, y, z); 0.5 mm in-plane, 2 mm slices
            for sub, array in (("images", image), ("masks", mask)):
                affine = np.diag([0.5, 0.5, 2.0, 1.0])
                nibabel.save(nibabel.Nifti1Image(array.transpose(2, 1, 0), affine), tmp_path / sub / f"v{i}.nii.gz")
        elif kind == "zarr":  # an OME-Zarr image: its scale is the spacing
            for sub, array in (("images", image), ("masks", mask)):
                group = zarr.open_group(str(tmp_path / sub / f"v{i}.ome.zarr"), mode="w")
                group.create_array("0", data=array, chunks=(4, 16, 16))
                transform = [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]
                axes = [{"name": a, "type": "space"} for a in "zyx"]
                group.attrs["multiscales"] = [
                    {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transform}]}
                ]
        else:
            for sub, array in (("images", image), ("masks", mask)):
                with h5py.File(tmp_path / sub / f"v{i}.h5", "w") as f:
                    f.create_dataset("data", data=array, chunks=(4, 16, 16)).attrs["element_size_um"] = [2, 0.5, 0.5]
    data = folder(tmp_path, val_fraction=0.0, num_classes=2)
    cases = {c.name: c for c in data.split("train").images}
    assert sorted(cases) == ["v0", "v1", "v2"]
    assert all(c.spacing == (2.0, 0.5, 0.5) for c in cases.values())
    for name, case in cases.items():
        image, mask = volumes[name]
        block = case.image.read_block((2, 3, 5), (4, 16, 16))
        assert np.array_equal(block[..., 0], image[2:6, 3:19, 5:21])
        assert np.array_equal(case.read_mask((2, 3, 5), (4, 16, 16)), mask[2:6, 3:19, 5:21] // 255)


def test_a_nifti_voxel_size_reads_as_the_decimal_that_was_written(tmp_path):
    """The header stores float32: 0.8 mm comes back as 0.8, not 0.800000011920929 (logs, plans, outputs)."""
    nibabel = pytest.importorskip("nibabel")
    from unet_train.data.volume_formats import open_nifti

    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([0.8, 0.7, 2.5, 1.0])), path)
    assert float(nibabel.load(path).header.get_zooms()[0]) == 0.800000011920929  # what a plain float() gives
    assert open_nifti(path, None).scale == {"x": 0.8, "y": 0.7, "z": 2.5}


def test_a_nifti_mask_on_other_voxels_than_its_image_is_refused_or_named(tmp_path, caplog):
    """A CT (int16 HU) whose label volume states another voxel spacing is refused; another orientation is warned of."""
    nibabel = pytest.importorskip("nibabel")
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    image, mask = ball_volume(0)
    hu = image.astype(np.int16) * 8 - 1024
    ct = np.diag([0.5, 0.5, 2.0, 1.0])
    flipped = np.array([[-0.5, 0, 0, 15.5], [0, 0.5, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])  # x runs the other way
    for name, mask_affine in (("a", ct), ("b", ct), ("c", np.diag([0.5, 0.5, 4.0, 1.0]))):
        nibabel.save(nibabel.Nifti1Image(hu.transpose(2, 1, 0), ct), tmp_path / "images" / f"{name}.nii.gz")
        stored = mask.transpose(2, 1, 0)
        nibabel.save(nibabel.Nifti1Image(stored, mask_affine), tmp_path / "masks" / f"{name}.nii.gz")
    with pytest.raises(DataError) as info:
        folder(tmp_path, val_fraction=0.0, num_classes=2).split("train")
    assert str(info.value) == (
        f"{tmp_path / 'masks' / 'c.nii.gz'} states the voxel spacing [4.0, 0.5, 0.5] (z, y, x) but its image "
        f"{tmp_path / 'images' / 'c.nii.gz'} states [2.0, 0.5, 0.5]: its labels would not lie on the image's voxels; "
        "resample the mask onto its image (the same shape, spacing and orientation), or set data.spacing=[z,y,x] "
        "where a header is wrong."
    )
    data = folder(tmp_path, val_fraction=0.0, num_classes=2, spacing=[2.0, 0.5, 0.5])  # the headers overruled
    assert len(data.split("train")) == 3
    nibabel.save(nibabel.Nifti1Image(mask[:, :, ::-1].transpose(2, 1, 0), flipped), tmp_path / "masks" / "b.nii.gz")
    (tmp_path / "masks" / "c.nii.gz").unlink()
    (tmp_path / "images" / "c.nii.gz").unlink()
    with caplog.at_level("WARNING", logger="unet_train.data.volume_geometry"):
        assert len(folder(tmp_path, val_fraction=0.0, num_classes=2).split("train")) == 2
    warnings = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.endswith("volume_geometry")
    ]
    assert warnings == [
        f"{tmp_path / 'masks' / 'b.nii.gz'} and its image {tmp_path / 'images' / 'b.nii.gz'} have different NIfTI "
        "affines (orientation RAS and LAS, or their origins): their voxels are paired as stored, so check that "
        "the labels lie on the image, and resample the mask onto its image where they do not."
    ]


def test_int16_ct_volumes_under_scale_linear_with_gain_null_are_warned_of_as_2d_images_are(tmp_path, caplog):
    """A CT in HU (-1024..1400 of int16) under data=volumes' default scaling becomes -0.031..0.043: said once."""
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        image, mask = ball_volume(i)
        hu = (image.astype(np.int16) - 40) * 8 - 704  # -1024 .. 1336
        hu[0, 0, :2] = -1024, 1400
        write_tiff(tmp_path / "images" / f"ct{i}.tif", hu)
        write_tiff(tmp_path / "masks" / f"ct{i}.tif", mask)
    with caplog.at_level("WARNING"):
        folder(tmp_path, val_fraction=0.0, num_classes=2).split("train")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "The int16 training images span only -1024 to 1400 of -32768 to 32767: scale_linear with gain null maps "
        "them into [-0.031, 0.043]; data/normalize=percentile (or a gain) spreads them over [0, 1]."
    ]
    caplog.clear()
    with caplog.at_level("WARNING"):
        window = {"scheme": "scale_linear", "gain": 1 / 400, "offset": 0.4}  # a CT window: nothing to say
        folder(tmp_path, val_fraction=0.0, num_classes=2, normalize=window).split("train")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_float_label_volume_with_fractions_is_refused_not_truncated(tmp_path):
    """A float NIfTI label volume resampled with linear interpolation (0.5 at a border) is refused, as a 2D mask of
    non-integer values is; whole-number floats are class indices."""
    nibabel = pytest.importorskip("nibabel")
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        image, mask = ball_volume(i)
        labels = (mask // 255).astype(np.float32)
        if i == 1:
            labels[3, 5, 7] = 0.5
        for sub, array in (("images", image), ("masks", labels)):
            nibabel.save(nibabel.Nifti1Image(array.transpose(2, 1, 0), np.eye(4)), tmp_path / sub / f"v{i}.nii.gz")
    with pytest.raises(DataError) as info:
        folder(tmp_path, val_fraction=0.0).split("train")
    assert str(info.value) == (
        f"Mask {tmp_path / 'masks' / 'v1.nii.gz'} has non-integer values (the first, 0.5, at z=3, y=5, x=7); label "
        "volumes store class indices: round them, or resample labels with nearest-neighbour interpolation."
    )
    (tmp_path / "masks" / "v1.nii.gz").unlink()
    (tmp_path / "images" / "v1.nii.gz").unlink()
    case = folder(tmp_path, val_fraction=0.0).split("train").images[0]
    assert np.array_equal(case.read_mask((0, 0, 0), case.shape[:3]), ball_volume(0)[1] // 255)


def test_int16_and_scaled_float_ct_volumes_under_gain_null_are_warned_of(tmp_path, caplog):
    """Two CTs in HU, one int16, one with a NIfTI scl_slope (read as float32): gain null divides one by 32767 and the
    other by 1, so the same HU reach the model 32767 times apart; the warning says so."""
    nibabel = pytest.importorskip("nibabel")
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        image, mask = ball_volume(i)
        hu = image.astype(np.int16) * 8 - 1024
        stored = nibabel.Nifti1Image(hu.transpose(2, 1, 0), np.eye(4))
        if i == 1:
            stored.header.set_slope_inter(1.0, -0.5)  # a scaled file: float32 values
        nibabel.save(stored, tmp_path / "images" / f"ct{i}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(mask.transpose(2, 1, 0), np.eye(4)), tmp_path / "masks" / f"ct{i}.nii.gz")
    with caplog.at_level("WARNING"):
        folder(tmp_path, val_fraction=0.0, num_classes=2).split("train")
    assert (
        "The training images mix integer (int16) and float (float32) values: scale_linear with gain null divides "
        "each by its type's maximum (32767 for int16, 1 for floats), so equal values reach the model scaled apart; "
        "give a gain for all (e.g. a CT window: data.normalize.gain=0.0025 data.normalize.offset=0.4) or "
        "data/normalize=percentile." in [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    )


def test_ignore_index_and_channels_last(tmp_path):
    root = tmp_path
    (root / "images").mkdir()
    (root / "masks").mkdir()
    image = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 2), dtype=np.uint8)  # z, y, x, c
    mask = np.zeros((8, 16, 16), dtype=np.uint8)
    mask[2:4] = 1
    mask[5] = 7  # unlabelled
    tifffile.imwrite(root / "images" / "a.tif", image)  # no axis metadata: channels=last says where c is
    write_tiff(root / "masks" / "a.tif", mask)
    data = folder(root, val_fraction=0.0, channels="last", ignore_index=7, in_channels=2)
    assert data.num_classes == 2
    item = data.dataset("all", augment=False)[0]
    assert item["image"].shape == (2, 8, 16, 16)
    assert torch.equal(item["image"][1, 3], torch.from_numpy(image[3, :, :, 1] / 255).float())
    assert set(item["mask"][5].unique().tolist()) == {IGNORE_INDEX} and item["mask"][2].eq(1).all()


def test_folder_errors_are_one_line(tmp_path):
    root = make_volume_folder(tmp_path, count=2)
    (root / "masks" / "vol1.tif").rename(root / "masks" / "other.tif")
    with pytest.raises(DataError) as info:
        folder(root).split("train")
    assert str(info.value) == (
        f"Unmatched file stems in {root.resolve()}: images without a mask: vol1; masks without an image: other; "
        "name each mask after its image."
    )
    with pytest.raises(ConfigError, match=r"^data.channels='middle' must be auto, first"):
        folder(root, channels="middle")
    assert volume_stem(root / "a.nii.gz") == "a" and volume_stem(root / "b.ome.zarr") == "b"
    assert volume_stem(root / "c.png") is None


def test_volumes_config_composes_and_builds(tmp_path):
    from unet_train.build import build_data

    cfg = compose_config(["data=volumes", f"data.root={make_volume_folder(tmp_path, count=2)}"])
    data = build_data(cfg.data)
    assert isinstance(data, VolumeFolder) and data.spatial_dims == 3 and data.patch == (32, 96, 96)
    assert [type(t).__name__ for t in data.volume_transform.transforms] == [
        "RandomFlip3D",
        "RandomRotate90InPlane",
        "RandomAxisSwap",
        "IntensityJitter",
    ]


def test_isbi_as_one_anisotropic_volume(isbi_root):
    from unet_train.build import build_data, resolve_data_config

    overrides = ["data=isbi", f"data.root={isbi_root}", "data.spatial_dims=3", "data.patch_size=[8,64,64]"]
    cfg = compose_config([*overrides, "model.depth=4"])
    data = build_data(cfg.data)
    resolve_data_config(cfg, data)
    (train,) = data.split("train").images
    (val,) = data.split("val").images
    assert train.shape[:3] == (25, 512, 512) and val.shape[:3] == (5, 512, 512) and train.spacing == (50, 4, 4)
    assert cfg.model.spatial_dims == 3
    # z is pooled only once y, x reach 32 nm; the patch keeps 8 planes, so it is pooled once, at the 4th level
    assert cfg.model.pool_factors == [[1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    item = data.dataset("train")[(0, 1)]
    assert item["image"].shape == (1, 8, 64, 64) and set(item["mask"].unique().tolist()) <= {0, 1}
    with pytest.raises(ConfigError, match=r"^data.fold=0 cuts a dataset into 2D folds; with data.spatial_dims=3"):
        build_data(compose_config([*overrides, "data.fold=0"]).data)
    with pytest.raises(ConfigError, match=r"^data.patch_size=\[8, 64, 64\] is a list: give one int"):
        build_data(compose_config([*overrides[:2], "data.patch_size=[8,64,64]"]).data)


def test_loader_workers_reopen_the_files_and_read_the_same_crops(tmp_path):
    """A crop follows from its seed in any worker; a forked worker reads through files of its own (sharing the
    parent's handles shares their file offset, so concurrent seek-and-read could mix bytes)."""
    root = make_volume_folder(tmp_path, count=3)
    data = folder(root, val_fraction=0.0)
    case = data.split("train").images[0]
    first = case.image
    case.pid = -1  # as in a process forked from this one
    data.dataset("train")[(0, 1)]
    assert case.image is not first and case.pid == os.getpid() and first.handle is not None
    crops = []
    for workers in (0, 2):
        data = folder(root, val_fraction=0.0, num_workers=workers, batch_size=2, samples_per_epoch=8)
        loader = data.dataloader("train", seed=3)
        crops.append([batch["image"] for batch in loader])
    assert len(crops[0]) == 4 and all(torch.equal(a, b) for a, b in zip(*crops, strict=True))


def test_a_one_plane_crop_flipped_along_z_becomes_a_tensor():
    """np.flip on an axis of length 1 leaves a negative stride that numpy calls contiguous and torch refused
    (unet-train data=volumes plan=auto on single-plane volumes stopped with a ValueError traceback)."""
    image = np.arange(16 * 16, dtype=np.uint8).reshape(1, 16, 16)
    case = array_case(image, (image % 5 == 0).astype(np.uint8))
    dataset = VolumeDataset([case], (1, 8, 8), transform=RandomFlip3D(axes=[0], p=1.0))
    item = dataset[(0, 7)]
    assert item["image"].shape == (1, 1, 8, 8) and item["mask"].shape == (1, 8, 8)


def small_and_large_folder(root):
    """vol0 (8, 32, 32) and vol1 (3, 10, 32): vol1 is shorter than a [4, 16, 16] crop on z and y."""
    make_volume_folder(root, count=1)
    image, mask = ball_volume(1, (3, 10, 32))
    mask[:, :, :4] = 255  # labelled foreground at a known place, so the kept labels can be matched
    write_tiff(root / "images" / "vol1.tif", image)
    write_tiff(root / "masks" / "vol1.tif", mask)
    return root, mask // 255


def test_a_volume_smaller_than_the_crop_is_padded_and_its_padding_ignored(tmp_path, caplog):
    """One small volume used to cut every crop to its size (nnU-Net pads it instead): every crop keeps
    data.patch_size, the small volume lies whole in its crops and the voxels around it are ignored."""
    root, small_mask = small_and_large_folder(tmp_path)
    with caplog.at_level("INFO", logger="unet_train.data.volume_data"):
        data = folder(root, val_fraction=0.0, batch_size=2, samples_per_epoch=12, foreground_oversample=0.5)
        loader = data.dataloader("train", seed=1)
    assert "1 training volume(s) smaller than the crop [4, 16, 16] (z, y, x) on some axis (vol1 (3, 10, 32))" in (
        caplog.text
    )
    seen = set()
    for batch in loader:
        assert batch["image"].shape == (2, 1, 4, 16, 16) and batch["mask"].shape == (2, 4, 16, 16)
        for name, image, mask in zip(batch["name"], batch["image"], batch["mask"]):
            seen.add(name)
            labelled = mask != IGNORE_INDEX
            if name == "vol0":
                assert labelled.all()
                continue
            zs, ys, xs = (torch.unique(i) for i in torch.nonzero(labelled, as_tuple=True))
            assert (len(zs), len(ys), len(xs)) == (3, 10, 16) and int(labelled.sum()) == 3 * 10 * 16  # one block
            block = mask[zs[0] : zs[-1] + 1, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1].numpy()
            assert any(np.array_equal(block, small_mask[:, :, x : x + 16]) for x in range(32 - 16 + 1))
            z0 = int(zs[0])  # the image around the volume mirrors it (as tiled prediction pads): z0 - 1 is z0 + 1
            if z0 > 0:
                assert torch.equal(image[0, z0 - 1], image[0, z0 + 1])
    assert seen == {"vol0", "vol1"}


def test_a_section_crop_of_a_small_volume_is_padded_in_plane(tmp_path):
    """2.5D crops share the padding: a volume 10 rows high gives [16, 16] crops whose 6 extra rows are ignored."""
    root, _ = small_and_large_folder(tmp_path)
    data = folder(root, val_fraction=0.0, context_slices=1, batch_size=2, samples_per_epoch=8)
    for batch in data.dataloader("train", seed=2):
        assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 16, 16)
        for name, mask in zip(batch["name"], batch["mask"]):
            assert int((mask != IGNORE_INDEX).sum()) == (10 * 16 if name == "vol1" else 16 * 16)


def test_a_folder_of_one_volume_validates_on_a_slab_of_it(tmp_path, caplog):
    """A user with one annotated volume trains on it: its last planes along the longest axis (x here), at least one
    crop deep, validate, as data=isbi data.spatial_dims=3 splits its one stack; the rest trains."""
    root = make_volume_folder(tmp_path, count=1, shape=(8, 32, 48))
    image, mask = ball_volume(0, (8, 32, 48))
    with caplog.at_level("INFO", logger="unet_train.data.volumes"):
        data = folder(root)  # data.val_fraction=0.2 of 48 is 10 planes: one crop (16) validates
        (train,) = data.split("train").images
        (val,) = data.split("val").images
    assert (train.name, train.shape[:3], val.name, val.shape[:3]) == (
        "vol0-x0-31",
        (8, 32, 32),
        "vol0-x32-47",
        (8, 32, 16),
    )
    assert f"{root.resolve() / 'images'} holds one labelled volume, vol0 (8, 32, 48) (z, y, x): its last 16 of 48 x " \
        "planes (x 32-47) validate, the rest train; data.val_fraction=0.2 sets the share" in caplog.text  # fmt: skip
    whole = data.dataset("val")[0]
    assert np.array_equal(whole["mask"].numpy(), mask[:, :, 32:] // 255)
    assert np.allclose(whole["image"][0].numpy(), image[:, :, 32:] / 255, atol=1e-6)
    assert np.array_equal(train.read_mask((0, 0, 0), (8, 32, 32)), mask[:, :, :32] // 255)
    case = data.split("train").images[0]
    case.pid = -1  # a loader worker reopens the file and cuts the same slab
    assert np.array_equal(case.read_mask((0, 0, 16), (8, 32, 16)), mask[:, :, 16:32] // 255)
    assert data.dataset("train")[(0, 3)]["image"].shape == (1, 4, 16, 16)
    # a volume under two crops deep: half of it validates, and the training crops of the other half are padded
    small = folder(make_volume_folder(tmp_path / "small", count=1, shape=(8, 20, 20)))
    assert [c.name for c in small.split("train").images + small.split("val").images] == ["vol0-y0-9", "vol0-y10-19"]
    assert small.dataset("train")[(0, 1)]["image"].shape == (1, 4, 16, 16)
    with pytest.raises(DataError) as info:
        folder(make_volume_folder(tmp_path / "tiny", count=1, shape=(2, 3, 4)), val_fraction=0.9).split("train")
    assert str(info.value) == (
        f"{(tmp_path / 'tiny' / 'images').resolve()} holds one labelled volume, vol0 (2, 3, 4) (z, y, x), too small "
        "to hold out a validation slab: of its 4 x plane(s), 4 would validate (data.val_fraction=0.9) and 0 train; "
        "add a second labelled volume there (it then validates), or lower data.val_fraction."
    )


def test_spawned_loader_workers_get_the_cases_pickled_and_read_the_same_crops(tmp_path):
    """``spawn`` (the default start method on macOS and Windows) pickles the dataset into each worker: the open
    TIFF files stay behind and the copy opens its own, reading the crops the parent would. (A spawned worker
    took 37 s to start on this loaded 2-core machine, too long for the suite; pickling is what it receives.)"""
    import pickle

    root = make_volume_folder(tmp_path, count=3)
    dataset = folder(root, val_fraction=0.0).dataset("train")
    copy = pickle.loads(pickle.dumps(dataset))
    assert all(case.image is None and case.pid == -1 for case in copy.cases)  # reopened on the first read
    items = [(0, 1), (1, 2), (2, 3)]
    expected = [dataset[i] for i in items]
    assert all(torch.equal(torch.as_tensor(copy[i]["image"]), torch.as_tensor(e["image"])) for i, e in zip(
        items, expected, strict=True))  # fmt: skip
    for i, want in zip(items, expected, strict=True):
        assert torch.equal(torch.as_tensor(copy[i]["mask"]), torch.as_tensor(want["mask"]))


def test_val_pick_typical_holds_out_the_volume_most_like_the_rest(tmp_path, caplog):
    """Of a handful of volumes, a random pick can validate on one unlike the rest (a block of nearly only
    background: its score swings and picks best.pt by chance); val_pick=typical (auto below 20 volumes) holds out
    the volume whose label shares lie nearest the folder's median."""
    root = tmp_path / "few"
    for folder_name in ("images", "masks"):
        (root / folder_name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, foreground in enumerate([16, 0, 14, 1, 30]):  # planes of 8 (z) x 32 (y) x 32 (x) that are foreground
        mask = np.zeros((8, 32, 32), np.uint8)
        mask[:, :foreground] = 255
        write_tiff(root / "images" / f"v{i}.tif", rng.integers(0, 255, (8, 32, 32), dtype=np.uint8))
        write_tiff(root / "masks" / f"v{i}.tif", mask)
    # foreground shares 0.5, 0, 0.4375, 0.03125, 0.9375: the median is 0.4375, so v2 validates
    with caplog.at_level("INFO", logger="unet_train.data.volumes"):
        data = folder(root, val_pick="auto")
        assert [c.name for c in data.split("val").images] == ["v2"]
    assert [c.name for c in data.split("train").images] == ["v0", "v1", "v3", "v4"]
    assert (
        "Validation volume(s): v2, of 5, whose label shares lie nearest the folder's median (data.val_pick=random "
        "draws them with data.split_seed instead)" in caplog.text
    )
    assert [c.name for c in folder(root, val_pick="typical", val_fraction=0.4).split("val").images] == ["v0", "v2"]
    # random (the argument's default, so a checkpoint's config saved before the key resumes on its split)
    from unet_train.data.splits import random_split

    expected = [f"v{i}" for i in random_split(5, 0.2, 3)[1]]
    assert [c.name for c in folder(root, split_seed=3).split("val").images] == expected
    assert [c.name for c in folder(root, split_seed=3, val_pick="random").split("val").images] == expected
    with pytest.raises(ConfigError) as info:
        folder(root, val_pick="best")
    assert str(info.value) == "data.val_pick='best' must be auto, typical, random or slabs."  # slabs named too


def test_val_pick_typical_reads_object_ids_as_foreground(tmp_path):
    """Instance labels: each volume's ids differ, so their foreground share (not each id's) is compared."""
    root = tmp_path / "ids"
    for folder_name in ("images", "masks"):
        (root / folder_name).mkdir(parents=True)
    for i, rows in enumerate([2, 12, 9, 10, 20]):  # foreground rows of 32: four objects side by side
        mask = np.zeros((4, 32, 32), np.uint16)
        for k in range(4):
            mask[:, :rows, 8 * k : 8 * k + 8] = 100 * i + k + 1
        write_tiff(root / "images" / f"n{i}.tif", np.full((4, 32, 32), 9, np.uint8))
        write_tiff(root / "masks" / f"n{i}.tif", mask)
    data = folder(root, val_pick="typical", labels="instances", num_classes="auto")
    # foreground shares 0.0625, 0.375, 0.28125, 0.3125 and 0.625: n3 holds the median (read as ids, each volume's
    # ids would count apart and n0, n2 and n3 would tie at 0.3125 from the median)
    assert [c.name for c in data.split("val").images] == ["n3"]


def test_val_pick_slabs_validates_on_a_slab_of_every_volume(tmp_path, caplog):
    """data.val_pick=slabs: each volume's last val_fraction of planes along its longest axis validates (no crop-deep
    minimum, as a lone volume's slab has: every volume gives its share), the rest of each trains."""
    root = make_volume_folder(tmp_path, count=3, shape=(8, 32, 48))
    with caplog.at_level("INFO", logger="unet_train.data.volumes"):
        data = folder(root, val_pick="slabs")
        train, val = data.split("train").images, data.split("val").images
    assert [(c.name, c.shape[:3]) for c in val] == [(f"vol{i}-x38-47", (8, 32, 10)) for i in range(3)]
    assert [(c.name, c.shape[:3]) for c in train] == [(f"vol{i}-x0-37", (8, 32, 38)) for i in range(3)]
    assert (
        f"data.val_pick=slabs: each of the 3 labelled volumes in {root.resolve() / 'images'} validates on its last "
        "data.val_fraction=0.2 of planes along its longest axis (vol0: x 38-47) and trains on the rest" in caplog.text
    )
    _, mask = ball_volume(1, (8, 32, 48))
    assert np.array_equal(data.dataset("val")[1]["mask"].numpy(), mask[:, :, 38:] // 255)
    with pytest.raises(DataError) as info:
        folder(make_volume_folder(tmp_path / "flat", count=2, shape=(1, 1, 1)), val_pick="slabs").split("train")
    assert str(info.value) == (
        f"{(tmp_path / 'flat' / 'images').resolve()} holds 2 labelled volumes and data.val_pick=slabs; vol0 (1, 1, 1) "
        "(z, y, x), too small to hold out a validation slab: of its 1 z plane(s), 1 would validate "
        "(data.val_fraction=0.2) and 0 train; set data.val_pick=typical, or lower data.val_fraction."
    )


def test_val_pick_typical_never_holds_out_a_volume_with_nothing_labelled(tmp_path):
    """A volume all data.ignore_index has no label shares: read as all-zero shares it lay nearest a median pulled
    down by itself, so typical validated on a volume with no voxel to score. It goes last; the median is the
    labelled volumes'."""
    root = tmp_path / "unlabelled"
    for folder_name in ("images", "masks"):
        (root / folder_name).mkdir(parents=True)
    for i, rows in enumerate([None, 29, 3]):  # rows of 32 that are foreground; None: nothing labelled
        mask = np.full((4, 32, 32), 255, np.uint8)
        if rows is not None:
            mask[:] = 0
            mask[:, :rows] = 1
        write_tiff(root / "images" / f"u{i}.tif", np.full((4, 32, 32), 9, np.uint8))
        write_tiff(root / "masks" / f"u{i}.tif", mask)
    # shares of u1 (0.09375, 0.90625), u2 (0.90625, 0.09375); as zeros, u0 lay 0.1875 from the median, u1, u2 0.8125
    data = folder(root, val_pick="typical", ignore_index=255, num_classes=2)
    assert [c.name for c in data.split("val").images] == ["u1"]
    assert [c.name for c in data.split("train").images] == ["u0", "u2"]
