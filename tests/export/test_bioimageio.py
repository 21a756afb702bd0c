"""bioimage.io packages: validated by bioimageio.spec and model-tested by bioimageio.core for each weight format."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io as skio

from ..conftest import compose_config
from .conftest import make_checkpoint

pytest.importorskip("bioimageio.core", reason='needs pip install "unet-train[export]"')
BIN = Path(sys.executable).parent


def export(ckpt: Path, out: Path, *overrides: str) -> dict:
    from unet_train.export.cli import run_export

    cfg = compose_config([f"ckpt={ckpt}", f"output={out}", *overrides], config_name="export")
    return run_export(cfg)


@pytest.mark.slow
def test_multiclass_package_validates_and_passes_the_model_test_for_every_weight_format(tmp_path):
    from bioimageio.spec import InvalidDescr, load_description

    overrides = [
        *("model=dense", "model.dense_layers=2", "model.dense_growth=4", "model.deep_supervision=true"),
        *("model.supervision_levels=1", "model.base_channels=4", "model.depth=2", "data.num_classes=3"),
    ]
    ckpt = make_checkpoint(tmp_path / "ckpt" / "best.pt", overrides)
    image = tmp_path / "test.png"  # the synthetic data is binary, so the test image comes from a file
    skio.imsave(image, np.random.default_rng(0).integers(0, 256, (42, 50)).astype(np.uint8), check_contrast=False)
    result = export(ckpt, tmp_path / "out", "format=bioimageio", "bioimageio.class_names=[bg,membrane,cell]",
                    f"bioimageio.test_image={image}")  # fmt: skip
    assert result["bioimageio_test"] == {"pytorch_state_dict": "passed", "torchscript": "passed", "onnx": "passed"}
    assert max(result["max_abs_diff"].values()) < 1e-4
    package = Path(result["package"])
    descr = load_description(package)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
    assert set(descr.weights.available_formats) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert descr.weights.torchscript.parent == descr.weights.onnx.parent == "pytorch_state_dict"
    assert [p.id for p in descr.outputs[0].postprocessing] == ["softmax", "ensure_dtype"]
    assert descr.outputs[0].axes[1].channel_names == ["bg", "membrane", "cell"]
    assert [str(a.id) for a in descr.inputs[0].axes] == ["batch", "channel", "y", "x"]
    assert descr.inputs[0].axes[2].size.min == descr.inputs[0].axes[2].size.step == 4
    with zipfile.ZipFile(package) as archive:  # the test image cropped to the size grid, raw uint8
        archive.extract("test_input.npy", tmp_path)
    test_input = np.load(tmp_path / "test_input.npy")
    assert test_input.shape == (1, 1, 40, 48) and test_input.dtype == np.uint8

    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        assert {"rdf.yaml", "README.md", "cover.png", "unet_arch.py", "weights.pt", "model.onnx", "model.pt",
                "test_input.npy", "test_output.npy"} <= names  # fmt: skip
        source = archive.read("unet_arch.py").decode()
        rdf_text = archive.read("rdf.yaml").decode()
    # the form bioimageio.spec 0.5.9 (ilastik) reads; bioimageio.core 0.11 loaded and tested it above
    assert "format_version: 0.5.9" in rdf_text and "documentation: README.md" in rdf_text
    assert "covers:\n- cover.png" in rdf_text
    with zipfile.ZipFile(package) as archive:
        archive.extract("weights.pt", tmp_path)
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.parse(source).body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {"__future__", "torch", "collections", "math"}, imported  # torch and the standard library
    # bioimage.io's loading: the architecture file's callable, then torch.load(weights_only=True)
    namespace: dict = {}
    exec(compile(source, "unet_arch.py", "exec"), namespace)  # our own generated file
    model = namespace["UNet"](**descr.weights.pytorch_state_dict.architecture.kwargs)
    model.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    assert model.eval()(torch.rand(1, 1, 20, 24)).shape == (1, 3, 20, 24)


@pytest.mark.slow
def test_binary_package_readme_reports_unet_eval_numbers(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", ["model.base_channels=4", "model.depth=2"])
    evaluated = subprocess.run(
        [str(BIN / "unet-eval"), f"ckpt={ckpt}", f"paths.output_dir={tmp_path}", "save_predictions=false"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics_file = next((tmp_path / "outputs" / "eval").glob("*/*/metrics.json"))
    metrics = {k: v for k, v in json.loads(metrics_file.read_text()).items() if "/" in k}
    assert "val/dice" in metrics

    result = export(ckpt, tmp_path / "out", "format=all", f"bioimageio.metrics={metrics_file}")
    assert set(result["bioimageio_test"].values()) == {"passed"}
    with zipfile.ZipFile(result["package"]) as archive:
        readme = archive.read("README.md").decode()
    validation = readme.split("# Validation", 1)[1]
    table = dict(re.findall(r"^\| (\S+/\S+) \| ([-\d.naninf]+) \|$", validation, flags=re.M))
    assert table == {key: f"{value:.4f}" for key, value in metrics.items()}
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "model.pt").is_file()
    saved = json.loads((tmp_path / "out" / "export.json").read_text())
    assert saved["max_abs_diff"]["onnx"] < 1e-4 and saved["max_abs_diff"]["torchscript"] < 1e-4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "abc", "bioimageio.name='abc' is refused by bioimage.io: "),
        ("license", "my-own-licence", "bioimageio.license='my-own-licence' is refused by bioimage.io: "),
    ],
)
def test_metadata_bioimageio_refuses_is_a_config_error_naming_the_key(tmp_path, field, value, message):
    from unet_train.errors import ConfigError
    from unet_train.export.bioimageio import PackageInfo, build_package, raw_to_nchw
    from unet_train.export.model import load_export_model
    from unet_train.export.package import save_package

    exported = load_export_model(make_checkpoint(tmp_path / "best.pt"))
    info = PackageInfo(**{"name": "tiny model", "description": "a test", "authors": [{"name": "t"}], field: value})
    folder = tmp_path / "pkg"
    folder.mkdir()
    rdf = build_package(exported, raw_to_nchw(np.zeros((16, 16), np.uint8)), folder, info, {}, None)
    with pytest.raises(ConfigError) as raised:
        save_package(rdf, folder, tmp_path / "t.zip")
    assert str(raised.value).startswith(message) and str(raised.value).endswith(
        "change bioimageio." + field + " (configs/export.yaml)."
    )
    assert "\n" not in str(raised.value)
