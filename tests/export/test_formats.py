"""ONNX and TorchScript exports of every variant against PyTorch, at two sizes and two batch sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unet_train.export.model import load_export_model, max_abs_difference, verification_inputs
from unet_train.export.torchscript import torchscript_runner, trace_torchscript

from .conftest import make_checkpoint

VARIANTS = {
    "vanilla": ["model=vanilla"],
    "attention": ["model=attention"],
    "attention_gate": ["model=attention_gate"],
    "dense": ["model=dense", "model.dense_layers=2", "model.dense_growth=4"],
    "dilated": ["model=dilated", "model.dilation_rates=[1,3,5]"],
    "deep_supervision": ["model=vanilla", "model.deep_supervision=true", "model.supervision_levels=1"],
    "multiclass": ["model=attention_gate", "data.num_classes=3"],
}
# One side a multiple of 2**depth (depth 2 here), one not a multiple of 4 or 16; batch 1 and 2.
SIZES, BATCHES = [[32, 32], [37, 45]], [1, 2]
ATOL = 1e-4


def _variant(name: str, tmp_path):
    overrides = [*VARIANTS[name], "model.base_channels=4", "model.depth=2"]
    exported = load_export_model(make_checkpoint(tmp_path / f"{name}.pt", overrides))
    inputs = verification_inputs(exported.in_channels, SIZES, BATCHES)
    return exported, inputs


def test_export_model_folds_batch_norms_and_drops_the_deep_supervision_heads(tmp_path):
    exported, inputs = _variant("deep_supervision", tmp_path)
    assert not hasattr(exported.model, "aux_heads") or len(exported.model.aux_heads) == 0
    assert exported.kwargs["deep_supervision"] is False
    assert not any(isinstance(m, nn.BatchNorm2d) for m in exported.folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in exported.model.modules())
    diff = max_abs_difference(exported.model, exported.folded, inputs)
    assert diff < 1e-5
    # the checkpoint's own model in eval mode gives the same logits as the export model
    checkpoint = torch.load(tmp_path / "deep_supervision.pt", weights_only=True)
    assert any(k.startswith("aux_heads.") for k in checkpoint["model"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_torchscript_matches_pytorch_at_other_sizes(name, tmp_path):
    exported, inputs = _variant(name, tmp_path)
    path = trace_torchscript(exported.folded, tmp_path / "model.pt", exported.in_channels)
    diff = max_abs_difference(exported.folded, torchscript_runner(path), inputs)
    print(f"torchscript {name}: {diff:.2e}")
    assert diff <= ATOL


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_onnx_matches_pytorch_with_dynamic_batch_and_sizes(name, tmp_path):
    pytest.importorskip("onnxruntime", reason='needs pip install "unet-train[export]"')
    import onnx

    from unet_train.export.onnx import export_onnx, onnx_runner

    exported, inputs = _variant(name, tmp_path)
    path = export_onnx(exported.folded, tmp_path / "model.onnx", exported.in_channels)
    graph = onnx.load(str(path)).graph
    for tensor in (graph.input[0], graph.output[0]):  # the axes named as a reader expects, not s77, s53
        dims = [d.dim_param or d.dim_value for d in tensor.type.tensor_type.shape.dim]
        assert dims[0] == "batch" and dims[2:] == ["y", "x"], dims
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_value == exported.in_channels
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)  # one file
    diff = max_abs_difference(exported.folded, onnx_runner(path), inputs)
    print(f"onnx {name}: {diff:.2e}")
    assert diff <= ATOL
    assert max_abs_difference(exported.model, onnx_runner(path), inputs) <= ATOL  # also the unfolded model


def test_onnx_export_keeps_the_missing_torchvision_lines_out_of_the_users_stderr(tmp_path):
    """torch's exporter warns once per torchvision op ("torchvision is not installed. Skipping ...")."""
    import subprocess
    import sys

    pytest.importorskip("onnxscript", reason='needs pip install "unet-train[export]"')
    code = (
        "import logging, torch; logging.basicConfig(level=logging.INFO)\n"
        "from unet_train.export.onnx import export_onnx\n"
        "class Net(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x * 2\n"
        f"export_onnx(Net().eval(), {str(tmp_path / 'm.onnx')!r}, 1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "m.onnx").is_file() and "Wrote" in done.stderr
    assert "torchvision" not in done.stderr, done.stderr[-2000:]
