"""A package's preprocessing + model reproduce unet-predict's probabilities on the same raw 16-bit image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from ..conftest import compose_config
from .conftest import make_checkpoint

pytest.importorskip("bioimageio.core", reason='needs pip install "unet-train[export]"')

DATASET_PERCENTILE = ["data/normalize=percentile", "data.normalize.per=dataset", "data.normalize.min_value=[1200.0]",
                      "data.normalize.max_value=[1260.0]"]  # fmt: skip
SCHEMES = {
    "percentile-image": ["data/normalize=percentile"],
    "percentile-dataset": DATASET_PERCENTILE,
    "zscore-image": ["data/normalize=zscore"],
}


def predict_probabilities(ckpt: Path, image: Path, out: Path) -> np.ndarray:
    """unet-predict on one image as one tile, no mirrored margin (the package sees the bare image)."""
    from unet_train.predict import run_predict

    cfg = compose_config([f"ckpt={ckpt}", f"input={image}", f"output={out}", "prob_dtype=float32",
                          "trainer.device=cpu", "margin=0"], config_name="predict")  # fmt: skip
    run_predict(cfg)
    return tifffile.imread(out / f"{image.stem}_prob.tif")


@pytest.mark.slow
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_package_reproduces_unet_predict_on_16_bit_data(tmp_path, scheme):
    from unet_train.export.bioimageio import PackageInfo, build_package, raw_to_nchw
    from unet_train.export.model import load_export_model
    from unet_train.export.package import save_package, test_package

    ckpt = make_checkpoint(tmp_path / "best.pt", ["data.in_channels=1", *SCHEMES[scheme]])
    # 16-bit values in a narrow band (1200..1260), far from what dividing by 255 or 65535 gives
    raw = np.random.default_rng(1).integers(1200, 1261, (40, 48)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "im.tif", raw)
    predicted = predict_probabilities(ckpt, tmp_path / "im.tif", tmp_path / "pred")

    folder = tmp_path / "pkg"
    folder.mkdir()
    exported = load_export_model(ckpt)
    info = PackageInfo("tiny model", "a test package", [{"name": "tester"}])
    rdf = build_package(exported, raw_to_nchw(raw), folder, info, {}, None)
    test_output = np.load(folder / "test_output.npy")
    np.testing.assert_allclose(test_output[0, 0], predicted, atol=1e-4)
    zip_path = save_package(rdf, folder, tmp_path / "t.zip")
    # bioimageio.core: the rdf's preprocessing on test_input.npy, the model, sigmoid == test_output.npy
    assert test_package(zip_path, ["pytorch_state_dict"]) == {"pytorch_state_dict": "passed"}


@pytest.mark.parametrize(
    ("in_channels", "shape"), [(3, (21, 26)), (1, (21, 26, 3))], ids=["grey-into-rgb", "rgb-into-grey"]
)
def test_a_test_image_gets_the_models_channels_as_in_unet_predict(tmp_path, in_channels, shape):
    """A grey test image for an RGB model (copied to 3 channels) and the reverse (BT.601 luminance)."""
    import torch

    from unet_train.data.reading import match_channels
    from unet_train.export.bioimageio import PackageInfo, build_package, raw_to_nchw
    from unet_train.export.model import load_export_model
    from unet_train.predict import to_input

    ckpt = make_checkpoint(tmp_path / "best.pt", [f"data.in_channels={in_channels}"])
    raw = np.random.default_rng(2).integers(0, 256, shape).astype(np.uint8)
    exported = load_export_model(ckpt)
    info = PackageInfo("tiny model", "a test package", [{"name": "tester"}])
    rdf = build_package(exported, raw_to_nchw(raw), tmp_path, info, {}, None)
    test_input, test_output = np.load(tmp_path / "test_input.npy"), np.load(tmp_path / "test_output.npy")
    assert test_input.shape == (1, in_channels, 20, 24) and test_input.dtype == np.uint8  # cropped to multiples of 4
    expected = match_channels(raw[:20, :24], in_channels, "x")
    np.testing.assert_array_equal(test_input[0], expected.transpose(2, 0, 1) if expected.ndim == 3 else expected[None])
    with torch.inference_mode():
        predicted = torch.sigmoid(exported.model(to_input(raw[:20, :24], in_channels, "x")[None])).numpy()
    np.testing.assert_allclose(test_output, predicted, atol=1e-6)
    assert len(rdf["inputs"][0]["axes"][1]["channel_names"]) == in_channels
