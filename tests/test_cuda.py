"""The CUDA paths: bf16 and fp16 autocast, channels-last, compile, the sync-free NaN guard, tiled
inference, device augmentation and NCCL. Skipped without a GPU (CI has none); run them on one with
``python -m pytest -m gpu``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unet_train.build import build_data, build_model
from unet_train.data import DeviceAugment
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.evaluate import evaluate
from unet_train.engine.fit import fit
from unet_train.engine.runtime import make_runtime
from unet_train.inference.tiling import TiledPredictor
from unet_train.models import UNet

from .conftest import TINY, compose_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# experiment=quickstart (synthetic membranes, base 16, depth 3, 8 epochs) on the GPU trainers.
QUICK = ["experiment=quickstart", "trainer.progress=never", "trainer.num_image_panels=1"]
ON_GPU = [o for o in TINY if not o.startswith("trainer=")] + ["trainer=gpu", "trainer.progress=never"]


@pytest.mark.parametrize("trainer", ["gpu", "gpu_fp16"])
def test_quickstart_learns_on_the_gpu_and_its_checkpoint_scores_the_same_on_the_cpu(tmp_path, trainer):
    """bf16 (trainer=gpu) and fp16 with loss scaling (trainer=gpu_fp16), channels-last, cuDNN autotuning:
    the run reaches the Dice the CPU run reaches (0.96 on CPU), and its best.pt, loaded on the CPU in
    float32, scores what the run logged for that epoch (within the autocast rounding)."""
    cfg = compose_config([*QUICK, f"trainer={trainer}"])
    metrics = fit(cfg, tmp_path)
    assert metrics["best/val/dice"] > 0.9, metrics

    ckpt = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert ("scale" in ckpt["scaler"]) == (trainer == "gpu_fp16")  # a disabled GradScaler saves {}
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    data = build_data(cfg.data)
    runtime = make_runtime("cpu", "32", channels_last=False)
    scores = evaluate(model, data.dataloader("val", shuffle=False), runtime, data.num_classes).metrics
    assert scores["dice"] == pytest.approx(metrics["best/val/dice"], abs=0.01)


def test_compiled_training_on_the_gpu_saves_plain_weights(tmp_path):
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    metrics = fit(compose_config([*ON_GPU, "trainer.compile=true", "trainer.max_epochs=1"]), tmp_path)
    assert counters["stats"]["unique_graphs"] >= 1
    assert metrics["steps"] == 2 and 0.0 <= metrics["val/dice"] <= 1.0
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert state and not any(key.startswith("_orig_mod.") for key in state)
    torch._dynamo.reset()


def test_an_isolated_nan_loss_is_skipped_without_a_per_step_sync(tmp_path, caplog):
    """On one GPU the NaN step's update is skipped on the device (the fused optimizer's found_inf), the
    flags are summed there and read at log points. As with the fp16 GradScaler's skips, the skipped
    step still counts as a step."""
    faulty = ["loss=bce", "loss._target_=tests.engine.faulty_loss.FaultyLoss", "+loss.nan_calls=[2]"]
    metrics = fit(compose_config([*ON_GPU, *faulty]), tmp_path)
    assert metrics["epochs"] == 2 and metrics["steps"] == 4
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt", trust=["tests.engine.faulty_loss"])
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert ckpt["optimizer"]["param_groups"][0]["fused"] is True
    steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {3.0}  # Adam's own step count: 4 steps, one skipped on the device
    assert "Non-finite loss in 1 of the last 1 steps; those steps skipped" in caplog.text


def test_tiled_prediction_on_the_gpu_matches_the_cpu():
    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=2, base_channels=8, depth=3).eval()
    image = torch.rand(1, 300, 217)
    cpu = TiledPredictor(model, tile_size=128, overlap=0.25, device="cpu").predict(image)
    gpu32 = TiledPredictor(model, tile_size=128, overlap=0.25, device="cuda").predict(image)
    bf16 = TiledPredictor(model, tile_size=128, overlap=0.25, device="cuda", autocast_dtype=torch.bfloat16)
    gpu16 = bf16.predict(image)
    assert gpu32.shape == cpu.shape == (2, 300, 217) and gpu32.device.type == "cpu"
    assert (gpu32 - cpu).abs().max() < 1e-3  # TF32 convolutions on the GPU
    assert (gpu16 - cpu).abs().max() < 5e-2 and (gpu16 - cpu).abs().mean() < 5e-3


def test_device_augment_on_the_gpu_keeps_masks_integral_and_flips_exact():
    masks = torch.zeros(8, 64, 64, dtype=torch.long, device="cuda")
    masks[:, 10:30, 5:50] = 1
    masks[:, 40:60, 20:25] = 1
    images = masks.unsqueeze(1).float()
    generator = torch.Generator(device="cuda").manual_seed(0)
    out_images, out_masks = DeviceAugment()(images, masks, generator)
    assert out_images.device.type == "cuda" and out_images.shape == images.shape
    assert out_masks.dtype == torch.long and set(out_masks.unique().tolist()) <= {0, 1}
    assert out_images.min() >= 0.0 and out_images.max() <= 1.0
    flip = dict(hflip_p=1.0, vflip_p=0, rotate90_p=0, rotate_p=0, elastic_p=0, intensity_p=0)
    flipped_images, flipped_masks = DeviceAugment(**flip)(images, masks, generator)
    assert torch.equal(flipped_masks, masks.flip(-1)) and torch.equal(flipped_images, images.flip(-1))
    again = DeviceAugment()(images, masks, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(again[0], out_images) and torch.equal(again[1], out_masks)  # seeded: reproducible


def test_training_with_device_augmentation_on_the_gpu(tmp_path, isbi_root):
    overrides = ["data=isbi_device", f"data.root={isbi_root}", "trainer=gpu", "trainer.progress=never"]
    overrides += ["model.base_channels=8", "trainer.max_epochs=2", "data.samples_per_epoch=16", "data.patch_size=128"]
    metrics = fit(compose_config(overrides), tmp_path)
    assert metrics["steps"] == 8 and 0.0 < metrics["val/dice"] <= 1.0


def test_torchrun_with_nccl_on_one_gpu(tmp_path):
    args = [o for o in TINY if not o.startswith("trainer=")] + ["trainer=ddp", "trainer.device=cuda"]
    args += ["trainer.precision=bf16", "trainer.progress=never"]
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node=1", "-m", "unet_train.train", *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = list((tmp_path / "outputs").glob("*/*"))
    assert "DDP: 1 processes, backend nccl" in (run / "train.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
