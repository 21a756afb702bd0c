"""data.normalize -> bioimage.io preprocessing (unet_train.data.normalize, the one mapping): bioimageio.core applying
the ops and the training normaliser both equal NumPy's computation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from unet_train.data.normalize import EPS, bioimageio_preprocessing, normalize_image, resolve_spec

core = pytest.importorskip("bioimageio.core", reason='needs pip install "unet-train[export]"')
from bioimageio.core import Sample, Tensor  # noqa: E402
from bioimageio.core.proc_setup import setup_pre_and_postprocessing  # noqa: E402
from bioimageio.spec.model import v0_5  # noqa: E402


def apply_ops(ops: list[dict], raw: np.ndarray) -> np.ndarray:
    """Run bioimage.io preprocessing ``ops`` on a raw ``(1, C, H, W)`` array with bioimageio.core."""
    descr = v0_5.InputTensorDescr.model_validate(
        {
            "id": "raw",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": [f"c{i}" for i in range(raw.shape[1])]},
                {"type": "space", "id": "y", "size": raw.shape[2]},
                {"type": "space", "id": "x", "size": raw.shape[3]},
            ],
            "data": {"type": "float32"},
            "preprocessing": ops,
        }
    )
    sample = Sample(members={"raw": Tensor.from_numpy(raw, dims=("batch", "channel", "y", "x"))}, stat={}, id="s")
    prep, _ = setup_pre_and_postprocessing(SimpleNamespace(inputs=[descr], outputs=[]), [sample])
    for op in prep:
        op(sample)
    return np.asarray(sample.members["raw"].data.values)


RNG = np.random.default_rng(0)
RAW8 = RNG.integers(0, 256, (1, 2, 24, 30)).astype(np.uint8)
RAW16 = RNG.integers(0, 65536, (1, 2, 24, 30)).astype(np.uint16)


def numpy_expected(raw: np.ndarray, spec: dict | None) -> np.ndarray:
    """Each scheme written out by hand, per channel (None: gain null, 1 / the dtype's maximum)."""
    x = raw.astype(np.float64)
    if spec is None:
        return x / np.iinfo(raw.dtype).max
    if spec["scheme"] == "scale_linear":
        gain = spec["gain"] if spec["gain"] is not None else 1.0 / np.iinfo(raw.dtype).max
        return x * gain + spec["offset"]
    if spec["scheme"] == "percentile":
        if spec["per"] == "image":
            lo = np.stack([np.percentile(x[0, c], spec["low"]) for c in range(x.shape[1])])
            hi = np.stack([np.percentile(x[0, c], spec["high"]) for c in range(x.shape[1])])
        else:
            lo, hi = np.array(spec["min_value"]), np.array(spec["max_value"])
        y = (x - lo[None, :, None, None]) / (hi - lo + EPS)[None, :, None, None]
        return np.clip(y, 0, 1) if spec["clip"] else y
    if spec["per"] == "image":
        mean = np.array([x[0, c].mean() for c in range(x.shape[1])])
        std = np.array([x[0, c].std() for c in range(x.shape[1])])
    else:
        mean, std = np.array(spec["mean"]), np.array(spec["std"])
    return (x - mean[None, :, None, None]) / (std + EPS)[None, :, None, None]


SPECS = [
    None,
    {"scheme": "scale_linear", "gain": None, "offset": 0.0},
    {"scheme": "scale_linear", "gain": 0.01, "offset": -0.5},
    {"scheme": "percentile", "low": 1.0, "high": 99.8, "per": "image", "min_value": None, "max_value": None,
     "clip": True},
    {"scheme": "percentile", "low": 1.0, "high": 99.8, "per": "image", "min_value": None, "max_value": None,
     "clip": False},
    {"scheme": "percentile", "low": 1.0, "high": 99.8, "per": "dataset", "min_value": [5.0, 7.0],
     "max_value": [200.0, 180.0], "clip": True},
    {"scheme": "zscore", "per": "image", "mean": None, "std": None},
    {"scheme": "zscore", "per": "dataset", "mean": [100.0, 120.0], "std": [30.0, 40.0]},
    {"scheme": "percentile", "low": 2.0, "high": 98.0, "per": "dataset", "min_value": [5.0, 7.0],
     "max_value": [200.0, 180.0], "clip": False},
]  # fmt: skip


CASES = [
    pytest.param(
        spec, raw, id=f"{'legacy' if spec is None else spec['scheme'] + '-' + spec.get('per', '')}-{raw.dtype}"
    )
    for spec in SPECS
    for raw in (RAW8, RAW16)
]


def training_normaliser(raw: np.ndarray, spec: dict | None) -> np.ndarray:
    """unet_train.data.normalize.normalize_image (training, unet-eval, unet-predict) on a ``(1, C, H, W)`` array."""
    return normalize_image(raw[0].transpose(1, 2, 0), resolve_spec(spec)).transpose(2, 0, 1)[None]


@pytest.mark.parametrize(("spec", "raw"), CASES)
def test_bioimageio_preprocessing_reproduces_each_scheme(spec, raw):
    expected = numpy_expected(raw, spec)
    ops = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}, *bioimageio_preprocessing(spec, raw.dtype)]
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(apply_ops(ops, raw), expected, atol=1e-5 * scale, rtol=1e-5)
    np.testing.assert_allclose(training_normaliser(raw, spec), expected, atol=1e-5 * scale, rtol=1e-5)


def test_dataset_percentile_keeps_the_training_eps():
    """A narrow dataset range (hi - lo = 1e-3): the package must divide by hi - lo + eps as training does."""
    spec = {"scheme": "percentile", "low": 1.0, "high": 99.8, "per": "dataset", "min_value": [0.5],
            "max_value": [0.501], "clip": False}  # fmt: skip
    raw = np.linspace(0.5, 0.501, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    ops = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}, *bioimageio_preprocessing(spec, raw.dtype)]
    np.testing.assert_allclose(apply_ops(ops, raw), training_normaliser(raw, spec), rtol=1e-5, atol=1e-6)


def test_op_names_are_bioimageio_operations():
    ids = [
        [op["id"] for op in bioimageio_preprocessing(spec, "uint8")]
        for spec in (None, SPECS[3], SPECS[5], SPECS[6], SPECS[7])
    ]
    assert ids == [
        ["scale_linear"],
        ["scale_range", "clip"],
        ["scale_linear", "clip"],
        ["zero_mean_unit_variance"],
        ["fixed_zero_mean_unit_variance"],
    ]
    assert bioimageio_preprocessing(SPECS[3], "uint8")[0]["kwargs"]["axes"] == ["y", "x"]  # per sample and channel


def test_legacy_preprocessing_equals_the_training_normalisation_on_an_isbi_slice(isbi_root):
    import tifffile

    from unet_train.data.base import image_to_tensor

    raw = np.asarray(tifffile.imread(isbi_root / "train-volume.tif", key=0))
    assert raw.dtype == np.uint8
    training = image_to_tensor(raw).numpy()  # what the data pipeline feeds the model today
    packaged = apply_ops(bioimageio_preprocessing(None, "uint8"), raw[None, None])
    np.testing.assert_allclose(packaged[0], training, atol=1e-6)
