"""Device and precision selection: auto (CUDA, then MPS, then CPU), mps, precision=auto; no hardware needed."""

from __future__ import annotations

import logging

import pytest
import torch

from unet_train.build import build_optimizer
from unet_train.engine import runtime
from unet_train.engine.fit import fit
from unet_train.engine.runtime import auto_precision, make_runtime, resolve_device, resolve_precision
from unet_train.errors import ConfigError
from unet_train.models import UNet

from ..conftest import TINY, compose_config


@pytest.fixture
def machine(monkeypatch):
    """Pretend which accelerators are present."""

    def set_machine(cuda: bool = False, mps: bool = False, fast_bf16: bool = False, macos14: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14)
        monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast_bf16)

    return set_machine


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (True, False, "cuda"), (False, False, "cpu")],
)
def test_auto_picks_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert resolve_device("auto") == torch.device(expected)


def test_mps_is_accepted_where_present_and_refused_in_one_line_elsewhere(machine):
    machine(mps=True)
    assert resolve_device("mps") == torch.device("mps")
    machine(mps=False)
    with pytest.raises(ConfigError) as info:
        resolve_device("mps")
    assert str(info.value) == (
        "trainer.device=mps but no Apple GPU (MPS) is available here (it needs macOS 12.3+ on Apple silicon or an "
        "AMD GPU, and a torch built with MPS); use trainer.device=cpu (or auto)."
    )
    with pytest.raises(ConfigError, match=r"trainer.device='xla' is not supported; use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("xla")


@pytest.mark.parametrize(
    ("device", "cuda", "fast_bf16", "expected"),
    [
        ("cpu", False, True, "bf16"),
        ("cpu", False, False, "32"),
        ("cuda", True, False, "bf16"),
        ("mps", False, True, "32"),
    ],
)
def test_precision_auto_is_bf16_where_the_device_runs_it_natively(machine, device, cuda, fast_bf16, expected):
    machine(cuda=cuda, fast_bf16=fast_bf16)
    assert auto_precision(torch.device(device)) == expected


def test_precision_auto_is_logged_and_resolved_in_the_runtime(machine, caplog):
    machine(fast_bf16=True, cuda=True)
    with caplog.at_level(logging.INFO, logger="unet_train.engine.runtime"):
        rt = make_runtime("cuda", "auto")
    assert rt.autocast_dtype is torch.bfloat16 and rt.precision == "bf16" and rt.auto == ()
    assert "trainer.precision=auto: bfloat16 autocast on cuda" in caplog.text
    # A CPU with native bf16 leaves it to measure (engine/autotune.py; tests/engine/test_autotune.py), bf16 till then.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unet_train.engine.runtime"):
        rt = make_runtime("cpu", "auto")
    assert rt.precision == "bf16" and rt.auto == ("precision",) and "trainer.precision" not in caplog.text
    machine(fast_bf16=False)
    with caplog.at_level(logging.INFO, logger="unet_train.engine.runtime"):
        rt = make_runtime("cpu", "auto")
    assert rt.precision == "32" and rt.auto == () and "trainer.precision=auto: float32 on cpu" in caplog.text


def test_mps_precisions(machine):
    machine(mps=True, macos14=True)
    mps = torch.device("mps")
    assert resolve_precision("16", mps) is torch.float16  # float16 autocast with a GradScaler on MPS
    assert resolve_precision("bf16", mps) is torch.bfloat16
    machine(mps=True, macos14=False)
    with pytest.raises(ConfigError, match="bf16 on an Apple GPU needs macOS 14 or newer"):
        resolve_precision("bf16", mps)
    with pytest.raises(ConfigError, match=r"trainer.precision=16 needs a CUDA or MPS device"):
        resolve_precision("16", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"'64' is not known; choose auto, 32, bf16 or 16"):
        resolve_precision("64", mps)


def test_an_mps_runtime_has_loss_scaling_only_for_float16_and_no_cuda_flags(machine):
    machine(mps=True)
    benchmark = torch.backends.cudnn.benchmark
    rt = make_runtime("mps", "16", cudnn_benchmark=not benchmark)
    assert rt.device.type == "mps" and rt.grad_scaler().is_enabled()
    assert torch.backends.cudnn.benchmark == benchmark  # cuDNN settings are CUDA's only
    assert not make_runtime("mps", "32").grad_scaler().is_enabled()


def test_fused_optimizers_are_asked_for_on_mps_as_torch_lists_it():
    """torch 2.13 lists mps among the devices with fused Adam/AdamW/SGD kernels; build_optimizer asks for them."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    assert "mps" in _get_fused_kernels_supported_devices()
    model = UNet(in_channels=1, out_channels=1, base_channels=4, depth=2)
    for optim in ("adam", "adamw", "sgd"):
        optimizer = build_optimizer(compose_config([*TINY, f"optim={optim}"]), model, fused=True)
        assert all(group["fused"] for group in optimizer.param_groups)


def test_no_pinned_memory_off_cuda(tmp_path, machine, monkeypatch):
    """The loaders pin memory only for CUDA (pinning is a CUDA feature; MPS and CPU get plain memory)."""
    seen: list[bool] = []
    from unet_train.data.base import SegmentationData

    original = SegmentationData.dataloader

    def recording(self, split, *args, **kwargs):
        seen.append(kwargs.get("pin_memory"))
        return original(self, split, *args, **kwargs)

    monkeypatch.setattr(SegmentationData, "dataloader", recording)
    fit(compose_config([*TINY, "trainer.max_epochs=1"]), tmp_path)
    assert seen == [False, False]


def test_a_bad_compile_mode_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        fit(compose_config([*TINY, "trainer.compile_mode=fastest"]), tmp_path)
    assert str(info.value) == (
        "trainer.compile_mode='fastest' is not known; choose default, reduce-overhead, max-autotune."
    )
