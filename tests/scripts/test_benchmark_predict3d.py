"""scripts/benchmark_predict3d.py: its plain sliding window is the reference the 3D tiler is compared with."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from unet_train.inference import TiledPredictor

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_predict3d.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_predict3d", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plain_sliding_window_equals_the_tiled_predictor_without_margin():
    script = load_script()
    model = script.build_model(base_channels=4, depth=2)
    image = torch.rand(1, 20, 28, 24, generator=torch.Generator().manual_seed(0))
    ours = TiledPredictor(model, tile_size=16, overlap=0.5, batch_size=3, margin=0).predict(image)
    plain = script.reference_sliding_window(model, image, tile=16, overlap=0.5, batch=3, align=4)
    assert ours.shape == plain.shape == (1, 20, 28, 24)
    assert float(ours.std()) > 0.01  # the model's output varies, so agreement says something
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)
