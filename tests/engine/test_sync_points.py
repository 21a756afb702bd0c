"""No host-device synchronisation in the training step outside the logging points.

On a CPU there is no device to wait for, so the test counts the calls that would be sync points on
a GPU (``Tensor.item``, ``.cpu``, ``.tolist``, ``.numpy``, ``bool``/``float``/``int`` of a tensor)
made by the per-step parts of the loop: the step itself, the batch's move to the device, the loss
window, the guard's bookkeeping and the time check. The log points (``LossWindow.read``,
``NonFiniteGuard.at_log_point``) are where reading is allowed. On CUDA the same is checked by
``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch

from unet_train.engine import epoch as epoch_module
from unet_train.engine import guard as guard_module
from unet_train.engine.fit import fit
from unet_train.engine.guard import NonFiniteGuard
from unet_train.engine.run import Run
from unet_train.engine.step import TrainStep
from unet_train.engine.stopping import StopRules

from ..conftest import TINY, compose_config

SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


class SyncCounter:
    """Counts sync-point calls on tensors, by the zone (part of the loop) they were made in."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.zone: str | None = None
        self.calls: Counter[tuple[str, str]] = Counter()
        self.monkeypatch = monkeypatch
        for name in SYNC_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))

    def _counted(self, name, method):
        @functools.wraps(method)
        def wrapper(tensor, *args, **kwargs):
            if self.zone is not None:
                self.calls[(self.zone, name)] += 1
            return method(tensor, *args, **kwargs)

        return wrapper

    def zone_of(self, owner: type, attribute: str, zone: str) -> None:
        """Calls made inside ``owner.attribute`` count in ``zone`` (the outermost zone wins)."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            outer = self.zone
            self.zone = outer or zone
            try:
                return original(*args, **kwargs)
            finally:
                self.zone = outer

        self.monkeypatch.setattr(owner, attribute, wrapper)

    def per_zone(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for (zone, _), n in self.calls.items():
            totals[zone] += n
        return dict(totals)


def count_syncs(monkeypatch, tmp_path, sync_free: bool, *overrides: str) -> dict[str, int]:
    if sync_free:  # the guard a single CUDA device with a fused optimizer gets (the fused CPU Adam honours found_inf)
        monkeypatch.setattr(guard_module, "can_skip_on_device", lambda device, optimizer: True)
    counter = SyncCounter(monkeypatch)
    counter.zone_of(TrainStep, "__call__", "step")
    counter.zone_of(Run, "inputs", "transfer")
    counter.zone_of(epoch_module.LossWindow, "add", "window")
    counter.zone_of(NonFiniteGuard, "kept", "guard")
    counter.zone_of(StopRules, "out_of_time", "schedule")
    counter.zone_of(epoch_module.LossWindow, "read", "log point")
    counter.zone_of(NonFiniteGuard, "at_log_point", "log point")
    config = compose_config([*TINY, "optim=adam", "trainer.max_epochs=2", "trainer.log_every=3", *overrides])
    metrics = fit(config, tmp_path)
    assert metrics["steps"] == 4  # 2 epochs of 8 images in batches of 4
    return counter.per_zone()


def test_the_sync_free_step_has_no_sync_point_outside_the_log_points(monkeypatch, tmp_path):
    zones = count_syncs(monkeypatch, tmp_path, True, "trainer.max_time=3600")
    assert {zone: n for zone, n in zones.items() if zone != "log point"} == {}
    # Log points: step 3 (the loss and the guard's count of skipped steps) and each epoch's end (the loss).
    assert zones["log point"] == 2 + 1 + 1


def test_the_counter_sees_the_host_side_guard_read_every_step(monkeypatch, tmp_path):
    """The check can fail: the host-side guard (CPU, DDP) reads each loss, one sync per step."""
    zones = count_syncs(monkeypatch, tmp_path, False)
    assert zones["step"] == 4
    assert zones["log point"] == 3  # the loss only: the host-side guard has no device-side count


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_step_does_not_synchronise(tmp_path):
    """torch.cuda.set_sync_debug_mode("error") around the steps between two log points of a real run."""
    from unet_train.engine.run import build_run

    config = compose_config([*TINY, "trainer=gpu", "trainer.progress=never", "optim=adam"])
    run = build_run(config)
    guard = NonFiniteGuard.for_run(run, tmp_path / "last.pt")
    assert guard.sync_free
    step = TrainStep.for_run(run, guard)
    window = epoch_module.LossWindow(run.runtime.device)
    run.start_epoch(0)
    pinned = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in run.train_loader]
    batches = pinned
    for batch in batches:  # warm-up: cuDNN autotuning and the allocator may synchronise on first use
        step(*run.inputs(batch)[:2])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            images, masks, extra = run.inputs(batch)
            window.add(*guard.kept(step(images, masks, **extra)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    guard.at_log_point(window.steps)
    assert window.read(run.dist) > 0
