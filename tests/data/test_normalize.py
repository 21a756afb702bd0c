"""data.normalize: each scheme against NumPy, dataset statistics, the spec's checks, the bioimage.io mapping,
and the same numbers in the training data and in unet-predict's conversion."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import tifffile
import torch

from unet_train.data import ImageFolder
from unet_train.data.base import image_to_tensor
from unet_train.data.normalize import (
    EPS,
    bioimageio_preprocessing,
    dataset_mean_std,
    dataset_percentiles,
    fill_dataset_stats,
    keeps_uint8,
    normalize_image,
    resolve_spec,
)
from unet_train.data.transforms import RandomBrightnessContrast
from unet_train.errors import ConfigError
from unet_train.predict import to_input

from ..conftest import compose_config

RNG = np.random.default_rng(0)
PERCENTILE = {"scheme": "percentile", "low": 1.0, "high": 99.8, "per": "image", "clip": False}


def spec(**kwargs) -> dict:
    return resolve_spec(kwargs)


def per_channel(image: np.ndarray) -> np.ndarray:
    return image[..., None].astype(np.float64) if image.ndim == 2 else image.astype(np.float64)


def test_scale_linear_gain_null_divides_by_the_dtype_maximum():
    u8 = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    u16 = RNG.integers(0, 65536, (6, 7, 2), dtype=np.uint16)
    f32 = RNG.normal(0, 5, (6, 7)).astype(np.float32)
    linear = spec(scheme="scale_linear")
    np.testing.assert_allclose(normalize_image(u8, linear), u8 / 255.0, rtol=1e-6)
    np.testing.assert_allclose(normalize_image(u16, linear), u16 / 65535.0, rtol=1e-6)
    np.testing.assert_array_equal(normalize_image(f32, linear), f32)
    custom = spec(scheme="scale_linear", gain=0.01, offset=-2.5)
    out = normalize_image(u16, custom)
    assert out.dtype == np.float32 and out.shape == u16.shape
    np.testing.assert_allclose(out, u16 * 0.01 - 2.5, rtol=1e-5, atol=1e-5)
    # uint8 under plain division stays uint8 in memory: the tensor is then exactly normalize_image's values.
    assert keeps_uint8(linear, u8.dtype) and not keeps_uint8(custom, u8.dtype) and not keeps_uint8(linear, u16.dtype)
    assert torch.equal(image_to_tensor(u8)[0], torch.from_numpy(normalize_image(u8, linear)))


@pytest.mark.parametrize("clip", [False, True])
def test_percentile_per_image_per_channel(clip):
    image = RNG.integers(900, 1200, (30, 40, 3), dtype=np.uint16)
    image[0, 0] = 65535  # a saturated pixel
    out = normalize_image(image, spec(**{**PERCENTILE, "clip": clip}))
    x = per_channel(image)
    lo, hi = np.percentile(x, 1.0, axis=(0, 1)), np.percentile(x, 99.8, axis=(0, 1))
    expected = (x - lo) / (hi - lo + EPS)
    if clip:
        expected = np.clip(expected, 0, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert (out.max() <= 1.0) == clip


def test_zscore_per_image_and_with_fixed_values():
    image = RNG.normal(500, 40, (20, 25, 2)).astype(np.float32)
    x = per_channel(image)
    out = normalize_image(image, spec(scheme="zscore"))
    np.testing.assert_allclose(out, (x - x.mean((0, 1))) / (x.std((0, 1)) + EPS), rtol=1e-5, atol=1e-5)
    fixed = spec(scheme="zscore", per="dataset", mean=[490.0, 510.0], std=[30.0, 50.0])
    np.testing.assert_allclose(normalize_image(image, fixed), (x - [490, 510]) / (np.array([30, 50]) + EPS), rtol=1e-5)


def test_dataset_statistics_equal_numpy_over_the_concatenated_split():
    u16 = [RNG.integers(800, 5000, shape, dtype=np.uint16) for shape in ((20, 30), (17, 9), (40, 40))]
    flat = np.concatenate([im.ravel() for im in u16])
    for q in (0.0, 1.0, 37.3, 99.8, 100.0):  # exact through the histogram, as np.percentile's linear method
        got = dataset_percentiles([im.ravel() for im in u16], [q])[0]
        assert got == pytest.approx(np.percentile(flat, q), abs=1e-9)
    floats = [im.astype(np.float32) / 7 for im in u16]
    assert dataset_percentiles([f.ravel() for f in floats], [2.0, 98.0]) == pytest.approx(
        np.percentile(np.concatenate([f.ravel() for f in floats]), [2.0, 98.0]), rel=1e-6
    )
    mean, std = dataset_mean_std([im.ravel() for im in u16])
    assert mean == pytest.approx(flat.mean(), rel=1e-12) and std == pytest.approx(flat.std(), rel=1e-10)

    rgb = [RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(3)]
    filled = fill_dataset_stats(spec(**{**PERCENTILE, "per": "dataset"}), rgb)
    stacked = np.concatenate([im.reshape(-1, 3) for im in rgb])
    np.testing.assert_allclose(filled["min_value"], np.percentile(stacked, 1.0, axis=0))
    np.testing.assert_allclose(filled["max_value"], np.percentile(stacked, 99.8, axis=0))
    z = fill_dataset_stats(spec(scheme="zscore", per="dataset"), rgb)
    np.testing.assert_allclose(z["mean"], stacked.mean(0)) and np.testing.assert_allclose(z["std"], stacked.std(0))
    given = spec(scheme="zscore", per="dataset", mean=[1.0, 2.0, 3.0], std=[1.0, 1.0, 1.0])
    assert fill_dataset_stats(given, rgb) == given  # values given are kept, not recomputed


def test_spec_checks_name_the_key_and_the_fix():
    assert resolve_spec(None) == {"scheme": "scale_linear", "gain": None, "offset": 0.0}
    # What a Hydra merge of another scheme leaves behind (defaults) is dropped; a real value is refused.
    assert resolve_spec({"scheme": "percentile", "gain": None, "offset": 0.0})["low"] == 1.0
    cases = [
        ({"scheme": "minmax"}, r"data.normalize.scheme='minmax' is not known; choose one of scale_linear, percentile"),
        ({"scheme": "zscore", "low": 2.0}, r"data.normalize.low=2.0 belongs to scheme percentile, not zscore"),
        ({"scheme": "zscore", "bogus": 1}, r"data.normalize.bogus is not a normalisation parameter"),
        ({"scheme": "percentile", "low": 50, "high": 10}, r"must satisfy 0 <= low < high <= 100"),
        ({"scheme": "zscore", "per": "batch"}, r"data.normalize.per='batch' must be image or dataset"),
        ({"scheme": "zscore", "per": "dataset", "mean": [1.0]}, r"mean and std must both be null or both lists"),
        ({"scheme": "zscore", "mean": [1.0], "std": [2.0]}, r"are dataset statistics: set data.normalize.per=dataset"),
        ({"scheme": "scale_linear", "gain": "big"}, r"data.normalize.gain='big' must be a finite number"),
    ]
    for given, message in cases:
        with pytest.raises(ConfigError, match=message):
            resolve_spec(given)
    with pytest.raises(ConfigError, match=r"per=dataset needs min_value and max_value"):
        normalize_image(np.zeros((3, 3), np.uint16), spec(**{**PERCENTILE, "per": "dataset"}))
    with pytest.raises(ConfigError, match=r"mean has 2 value\(s\) but the images have 1 channel"):
        normalize_image(np.zeros((3, 3)), spec(scheme="zscore", per="dataset", mean=[0, 1], std=[1, 1]))


def apply_bioimageio(ops: list[dict], x: np.ndarray) -> np.ndarray:
    """The bioimage.io preprocessing operations, as their spec defines them, on (H, W, C) float64."""
    for op in ops:
        kw = op["kwargs"]
        if op["id"] == "scale_linear":
            x = x * np.asarray(kw["gain"]) + np.asarray(kw["offset"])
        elif op["id"] == "scale_range":
            lo = np.percentile(x, kw["min_percentile"], axis=(0, 1))
            hi = np.percentile(x, kw["max_percentile"], axis=(0, 1))
            x = (x - lo) / (hi - lo + kw["eps"])
        elif op["id"] == "zero_mean_unit_variance":
            x = (x - x.mean((0, 1))) / (x.std((0, 1)) + kw["eps"])
        elif op["id"] == "fixed_zero_mean_unit_variance":
            assert "eps" not in kw  # not a kwarg of this operation in bioimage.io (spec 0.5)
            x = (x - np.asarray(kw["mean"])) / np.asarray(kw["std"])
        elif op["id"] == "clip":
            x = np.clip(x, kw["min"], kw["max"])
        else:
            raise AssertionError(op)
    return x


@pytest.mark.parametrize(
    "given",
    [
        {"scheme": "scale_linear"},
        {"scheme": "scale_linear", "gain": 0.002, "offset": -1.0},
        {**PERCENTILE, "clip": True},
        {**PERCENTILE, "per": "dataset", "min_value": [950.0, 1000.0], "max_value": [1100.0, 1300.0]},
        {"scheme": "zscore"},
        {"scheme": "zscore", "per": "dataset", "mean": [1000.0, 1050.0], "std": [40.0, 60.0]},
    ],
    ids=["scale_linear_null", "scale_linear", "percentile_clip", "percentile_dataset", "zscore", "zscore_fixed"],
)
def test_bioimageio_operations_compute_the_same(given):
    image = RNG.integers(900, 1300, (16, 20, 2), dtype=np.uint16)
    ops = bioimageio_preprocessing(given, dtype=image.dtype)
    expected = apply_bioimageio(ops, image.astype(np.float64))
    np.testing.assert_allclose(normalize_image(image, resolve_spec(given)), expected, rtol=1e-5, atol=1e-5)


def write_tiff_folder(root, n: int = 6, size=(24, 28)) -> list[np.ndarray]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    images = []
    for i in range(n):
        image = RNG.integers(900, 1300 + 100 * i, size, dtype=np.uint16)
        mask = (image > 1100).astype(np.uint8)
        tifffile.imwrite(root / "images" / f"im{i}.tif", image)
        tifffile.imwrite(root / "masks" / f"im{i}.tif", mask)
        images.append(image)
    return images


def test_the_narrow_range_warning_gives_the_range_signed_ct_images_are_mapped_into(tmp_path, caplog):
    """int16 HU planes under scale_linear with gain null: values -1024..1400 become -0.031..0.043, not 0..0.043."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        hu = RNG.integers(-1024, 1401, (16, 16)).astype(np.int16)
        hu[0, :2] = -1024, 1400
        tifffile.imwrite(tmp_path / "images" / f"ct{i}.tif", hu)
        tifffile.imwrite(tmp_path / "masks" / f"ct{i}.tif", (hu > 300).astype(np.uint8))
    with caplog.at_level("WARNING", logger="unet_train.data.base"):
        ImageFolder(root=str(tmp_path), num_workers=0, patch_size=16, val_fraction=0.0).split("train")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "The int16 training images span only -1024 to 1400 of -32768 to 32767: scale_linear with gain null maps "
        "them into [-0.031, 0.043]; data/normalize=percentile (or a gain) spreads them over [0, 1]."
    ]
    hu[0, 0] = -30000  # a wide signed range is no narrow one
    tifffile.imwrite(tmp_path / "images" / "ct0.tif", hu)
    caplog.clear()
    with caplog.at_level("WARNING", logger="unet_train.data.base"):
        ImageFolder(root=str(tmp_path), num_workers=0, patch_size=16, val_fraction=0.0).split("train")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    tifffile.imwrite(tmp_path / "images" / "ct1.tif", hu.astype(np.float32))  # HU as floats beside int16 HU
    caplog.clear()
    with caplog.at_level("WARNING", logger="unet_train.data.base"):
        ImageFolder(root=str(tmp_path), num_workers=0, patch_size=16, val_fraction=0.0).split("train")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "The training images mix integer (int16) and float (float32) values: scale_linear with gain null divides "
        "each by its type's maximum (32767 for int16, 1 for floats), so equal values reach the model scaled apart; "
        "give a gain for all (e.g. a CT window: data.normalize.gain=0.0025 data.normalize.offset=0.4) or "
        "data/normalize=percentile."
    ]


def test_training_data_and_predict_conversion_apply_the_same_numbers(tmp_path):
    """per=dataset statistics come from the training split only; every split, and unet-predict's to_input with
    the resolved spec, normalise with them exactly as NumPy does."""
    from unet_train.build import build_data, resolve_data_config

    images = write_tiff_folder(tmp_path)
    cfg = compose_config(
        ["data=folder", f"data.root={tmp_path}", "data/normalize=zscore", "data.normalize.per=dataset",
         "data.num_workers=0", "data.val_fraction=0.34", "model.base_channels=4", "model.depth=2"]
    )  # fmt: skip
    data = build_data(cfg.data)
    resolve_data_config(cfg, data)
    train_names = data.split("train").names
    train = np.concatenate([images[int(n[2:])].ravel() for n in train_names]).astype(np.float64)
    assert cfg.data.in_channels == 1 and cfg.data.num_classes == 2
    assert cfg.data.normalize.mean[0] == pytest.approx(train.mean()) and cfg.data.normalize.std[0] == pytest.approx(
        train.std()
    )
    assert cfg.model.in_channels == 1  # interpolated from the resolved value
    val = data.dataset("val")[0]
    raw = images[int(val["name"][2:])]
    expected = (raw - train.mean()) / (train.std() + EPS)
    np.testing.assert_allclose(val["image"][0].numpy(), expected, rtol=1e-5, atol=1e-5)
    # unet-predict: the raw pixels and the checkpoint's resolved data.normalize give the same tensor.
    assert torch.equal(to_input(raw, 1, "x", cfg.data.normalize), val["image"])
    # A data config built from the resolved values (what unet-eval does) gives the same items.
    again = ImageFolder(**{k: v for k, v in cfg.data.items() if k not in ("_target_", "train_transform")})
    assert torch.equal(again.dataset("val")[0]["image"], val["image"])


def test_predict_conversion_matches_uint8_training_path_and_converts_channels():
    grey = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    assert torch.equal(to_input(grey, 1, "g"), image_to_tensor(grey))  # old checkpoints: no data.normalize
    rgb = to_input(grey, 3, "g", {"scheme": "percentile", "low": 0, "high": 100, "per": "image"})
    expected = (grey - grey.min()) / (grey.max() - grey.min() + EPS)
    assert rgb.shape == (3, 9, 11)
    for c in range(3):
        np.testing.assert_allclose(rgb[c].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_brightness_contrast_keeps_float_values_and_uint8_results():
    float_image = RNG.normal(0, 2, (32, 32)).astype(np.float32)  # z-scored: far outside [0, 1]
    ours = RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0)
    ours.set_random_state(np.random.default_rng(3), __import__("random").Random(3))
    params = ours.get_params_dependent_on_data({}, {"image": float_image})
    out = ours.apply(float_image, **params)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, float_image * params["alpha"] + params["beta"], rtol=1e-6, atol=1e-6)
    assert out.min() < -1 and out.max() > 2  # albumentations' own would clip to [0, 1]
    theirs = A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0)
    assert theirs.apply(float_image, **params).min() == 0.0
    u8 = RNG.integers(0, 256, (32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(ours.apply(u8, **params), theirs.apply(u8, **params))


def test_every_normalize_option_composes_into_every_data_config(tmp_path):
    from unet_train.config import config_dir

    options = sorted(p.stem for p in (config_dir() / "data" / "normalize").glob("*.yaml"))
    assert options == ["percentile", "scale_linear", "zscore"]
    for option in options:
        for data in ("isbi", "folder", "synthetic", "isbi_device"):
            root = [f"data.root={tmp_path}"] if data == "folder" else []
            cfg = compose_config([f"data={data}", f"data/normalize={option}", *root])
            assert resolve_spec(cfg.data.normalize)["scheme"] == option
    assert compose_config(["data=isbi"]).data.normalize.scheme == "scale_linear"


def test_panels_show_normalised_inputs_in_the_display_range():
    from unet_train.engine.tensorboard import display_grey

    unit = torch.rand(1, 8, 8)
    assert torch.equal(display_grey(unit), unit[0])  # [0, 1] inputs are shown as they are
    z = torch.randn(3, 8, 8) * 3
    shown = display_grey(z)
    mean = z.mean(0)
    assert shown.min() == 0 and shown.max() == 1
    torch.testing.assert_close(shown, (mean - mean.min()) / (mean.max() - mean.min()))
