"""The parts fit() is made of, each on its own: the non-finite guard, one step, the stopping rules,
the checkpointer and the loss window."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.checkpointer import Checkpointer
from unet_train.engine.distributed import Distributed
from unet_train.engine.epoch import LossWindow
from unet_train.engine.guard import NonFiniteGuard, can_skip_on_device
from unet_train.engine.run import TrainState
from unet_train.engine.runtime import Runtime, make_runtime
from unet_train.engine.signals import GracefulStop
from unet_train.engine.step import TrainStep
from unet_train.engine.stopping import StopRules
from unet_train.engine.validation import track_best
from unet_train.errors import ConfigError, RunInterrupted, TrainingDiverged

NAN = torch.tensor(float("nan"))


def host_guard(tmp_path: Path, limit: int = 3, state: TrainState | None = None) -> NonFiniteGuard:
    return NonFiniteGuard(limit, False, torch.device("cpu"), state or TrainState(), tmp_path / "last.pt")


# -- the non-finite guard ------------------------------------------------------------------------


def test_host_guard_skips_bad_losses_and_counts_them_in_a_row(tmp_path, caplog):
    state = TrainState(epoch=1, step=7)
    guard = host_guard(tmp_path, state=state)
    assert guard.admit(torch.tensor(0.5))
    with caplog.at_level(logging.WARNING):
        assert not guard.admit(NAN)
        assert not guard.admit(torch.tensor(float("inf")))
    assert guard.consecutive == 2
    assert "Non-finite loss at step 7 (2 in a row); step skipped" in caplog.text
    assert guard.admit(torch.tensor(0.1)) and guard.consecutive == 0
    assert guard.kept(torch.tensor(0.25)) == (torch.tensor(0.25), 1)


def test_host_guard_stops_at_the_limit_naming_step_epoch_and_checkpoint(tmp_path):
    guard = host_guard(tmp_path, limit=2, state=TrainState(epoch=3, step=5))
    assert not guard.admit(NAN)
    with pytest.raises(TrainingDiverged, match=r"2 consecutive steps \(last at step 5, epoch 4\).*none was saved"):
        guard.admit(NAN)
    (tmp_path / "last.pt").write_bytes(b"")
    guard = host_guard(tmp_path, limit=1)
    with pytest.raises(TrainingDiverged, match=f"the last good checkpoint {tmp_path / 'last.pt'} is kept"):
        guard.admit(NAN)


def test_sync_free_guard_admits_everything_and_counts_on_the_device(tmp_path, caplog):
    state = TrainState(step=4)
    guard = NonFiniteGuard(3, True, torch.device("cpu"), state, tmp_path / "last.pt")
    loss_sum, count = torch.zeros(()), torch.zeros(())
    for value in (1.0, float("nan"), 3.0):
        loss = torch.tensor(value)
        assert guard.admit(loss)  # no host read: the optimizer skips the update
        kept, n = guard.kept(loss)
        loss_sum, count = loss_sum + kept, count + n
    assert float(loss_sum) == 4.0 and float(count) == 2.0  # the NaN step adds nothing
    with caplog.at_level(logging.WARNING):
        guard.at_log_point(steps=3)
    assert "Non-finite loss in 1 of the last 3 steps; those steps skipped" in caplog.text
    assert guard.consecutive == 1
    guard.admit(NAN), guard.admit(NAN)
    with pytest.raises(TrainingDiverged, match=r"NaN/inf for 3 steps up to step 4; training stopped"):
        guard.at_log_point(steps=2)


def test_sync_free_guard_hands_its_flag_to_the_optimizer_unless_a_scaler_does(tmp_path):
    guard = NonFiniteGuard(3, True, torch.device("cpu"), TrainState(), tmp_path / "last.pt")
    guard.admit(NAN)
    optimizer = SimpleNamespace()
    guard.arm(optimizer, torch.amp.GradScaler("cpu", enabled=False))  # type: ignore[arg-type]
    assert float(optimizer.found_inf) == 1.0
    host = host_guard(tmp_path)
    other = SimpleNamespace()
    host.arm(other, torch.amp.GradScaler("cpu", enabled=False))  # type: ignore[arg-type]
    assert not hasattr(other, "found_inf")


def test_the_device_side_skip_needs_cuda_and_an_optimizer_that_takes_found_inf():
    takes = SimpleNamespace(_step_supports_amp_scaling=True)
    assert can_skip_on_device(torch.device("cuda"), takes)  # type: ignore[arg-type]
    assert not can_skip_on_device(torch.device("cpu"), takes)  # type: ignore[arg-type]
    assert not can_skip_on_device(torch.device("cuda"), SimpleNamespace())  # type: ignore[arg-type]


# -- one training step ---------------------------------------------------------------------------


def linear_step(tmp_path: Path, grad_clip: float | None = None, sync_free: bool = False, fused: bool = False):
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    if fused:
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    runtime = make_runtime("cpu", "32", channels_last=False)
    guard = NonFiniteGuard(3, sync_free, runtime.device, TrainState(), tmp_path / "last.pt")
    criterion = nn.MSELoss()
    step = TrainStep(model, model, criterion, optimizer, runtime.grad_scaler(), scheduler, runtime, guard, grad_clip)
    return model, step, scheduler


def test_a_step_is_one_sgd_update_and_one_schedule_step(tmp_path):
    model, step, scheduler = linear_step(tmp_path)
    x, y = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[2.0]])
    w = model.weight.detach().clone()
    loss = step(x, y)
    expected_grad = 2 * ((x @ w.T) - y) * x  # d/dw (x.w - y)^2
    assert loss is not None and float(loss) == pytest.approx(float(((x @ w.T) - y) ** 2))
    assert torch.allclose(model.weight.detach(), w - 0.1 * expected_grad)
    assert scheduler.get_last_lr() == [pytest.approx(0.05)]  # the schedule stepped once: 0.1 * 0.5


def test_gradient_clipping_bounds_the_update(tmp_path):
    model, step, _ = linear_step(tmp_path, grad_clip=0.01)
    w = model.weight.detach().clone()
    step(torch.tensor([[10.0, 20.0, -10.0]]), torch.tensor([[50.0]]))
    assert float((model.weight.detach() - w).norm()) == pytest.approx(0.1 * 0.01, rel=1e-4)


def test_a_skipped_step_leaves_weights_and_schedule_alone(tmp_path):
    model, step, scheduler = linear_step(tmp_path)
    w = model.weight.detach().clone()
    assert step(torch.tensor([[float("nan"), 0.0, 0.0]]), torch.tensor([[1.0]])) is None
    assert torch.equal(model.weight.detach(), w) and scheduler.get_last_lr() == [pytest.approx(0.1)]


def test_the_sync_free_skip_leaves_fused_adam_untouched(tmp_path):
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], fused=True)
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        pytest.skip("this torch has no fused Adam on the CPU")
    model, step, _ = linear_step(tmp_path, sync_free=True, fused=True)
    w = model.weight.detach().clone()
    loss = step(torch.tensor([[float("nan"), 0.0, 0.0]]), torch.tensor([[1.0]]))
    assert loss is not None and torch.isnan(loss)  # the step ran; the optimizer skipped the update itself
    assert torch.equal(model.weight.detach(), w)
    step(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0]]))
    assert not torch.equal(model.weight.detach(), w)


# -- the stopping rules ----------------------------------------------------------------------------


def rules(**trainer) -> StopRules:
    settings = {"max_epochs": 5, "max_time": None, "early_stopping_patience": None, **trainer}
    return StopRules(SimpleNamespace(**settings), GracefulStop())


def test_stop_reasons_after_an_epoch():
    assert rules().after_epoch(TrainState(epoch=1), out_of_time=False) is None
    assert rules(max_time=2.5).after_epoch(TrainState(), out_of_time=True) == "max_time (2.5 s)"
    patient = rules(early_stopping_patience=2)
    assert patient.after_epoch(TrainState(stale_validations=1), out_of_time=False) is None
    reason = patient.after_epoch(TrainState(stale_validations=2), out_of_time=False)
    assert reason == "early stopping (2 validations without improvement)"


def test_the_time_budget_runs_out():
    assert not rules().out_of_time()
    assert not rules(max_time=3600.0).out_of_time()
    assert rules(max_time=1e-9).out_of_time()


def test_a_signal_interrupts_except_after_the_last_epoch(tmp_path):
    stop = rules()
    assert not stop.signalled and not stop.interrupt_after_epoch(TrainState(epoch=2))
    stop.signals.signal = signal.SIGTERM
    assert stop.interrupt_after_epoch(TrainState(epoch=2))
    assert not stop.interrupt_after_epoch(TrainState(epoch=5))
    error = stop.interrupted(tmp_path / "last.pt", step=9, saved=True)
    assert isinstance(error, RunInterrupted) and "Stopped by SIGTERM after step 9" in str(error)


# -- the checkpointer ------------------------------------------------------------------------------


def fake_run(is_main: bool = True) -> SimpleNamespace:
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return SimpleNamespace(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        state=TrainState(epoch=3, step=12, best=0.5, best_epoch=2),
        cfg=OmegaConf.create({"monitor": "val/dice"}),
        resolved_config={"seed": 1, "model": {"_target_": "unet_train.models.UNet", "depth": 2}, "data": {"root": "."}},
        # rank 1 without a process group: the collectives are no-ops, only the rank differs
        dist=Distributed(rank=0 if is_main else 1),
        steps_per_epoch=4,
        schedule_steps_per_epoch=4,
        runtime=Runtime(torch.device("cpu"), None, channels_last=False),
    )


def test_checkpointer_writes_a_loadable_checkpoint_and_clears_leftovers(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".last.pt.abc.tmp").write_bytes(b"cut short")
    run = fake_run()
    with caplog.at_level(logging.WARNING):
        checkpoints = Checkpointer(folder, run)
    assert not (folder / ".last.pt.abc.tmp").exists() and "cut short by a kill" in caplog.text
    assert checkpoints.save("last.pt") and checkpoints.last == folder / "last.pt"
    ckpt = load_checkpoint(folder / "last.pt")
    assert ckpt["state"] == {
        "epoch": 3,
        "step": 12,
        "best": 0.5,
        "best_epoch": 2,
        "stale_validations": 0,
        "batch": 0,
        "planned_steps": 0,
        "elapsed": 0.0,
        "progress": None,
        "validation_s": None,
        "checkpoint_s": 0.0,
        "validation_total_s": 0.0,
        "val_every": 0,
        "validated_epoch": 0,
        "replans": [],
    }
    assert ckpt["monitor"] == "val/dice" and ckpt["config"]["seed"] == 1 and ckpt["config"]["model"]["depth"] == 2
    assert ckpt["runtime"] == {"precision": "32", "channels_last": False}  # what a resume with auto goes on in
    assert torch.equal(ckpt["model"]["weight"], run.model.weight.detach())


def test_checkpointer_keeps_the_last_good_file_and_leaves_writing_to_the_main_rank(tmp_path):
    run = fake_run()
    checkpoints = Checkpointer(tmp_path, run)
    assert checkpoints.save("last.pt")
    good = (tmp_path / "last.pt").read_bytes()
    with torch.no_grad():
        run.model.weight.fill_(float("nan"))
    assert not checkpoints.save("last.pt")
    assert (tmp_path / "last.pt").read_bytes() == good
    assert not Checkpointer(tmp_path / "other", fake_run(is_main=False)).save("last.pt")
    assert not (tmp_path / "other").exists()


# -- the loss window and the best value ------------------------------------------------------------


def test_the_loss_window_averages_the_kept_steps_and_restarts():
    window = LossWindow(torch.device("cpu"))
    window.add(torch.tensor(1.0), 1)
    window.add(torch.tensor(0.0), torch.tensor(False))  # a step skipped on the device
    window.add(torch.tensor(2.0), 1)
    assert window.steps == 3 and window.read(Distributed()) == pytest.approx(1.5)
    assert window.steps == 0
    window.add(torch.tensor(0.0), torch.tensor(False))
    assert torch.isnan(torch.tensor(window.read(Distributed())))  # every step skipped


def test_track_best_counts_stale_validations_and_names_the_valid_keys():
    state = TrainState(epoch=1)
    assert track_best(state, "val/loss", {"val/loss": 0.5}, "min") and state.best == 0.5
    state.epoch = 2
    assert not track_best(state, "val/loss", {"val/loss": 0.7}, "min") and state.stale_validations == 1
    assert state.best_epoch == 1
    with pytest.raises(ConfigError, match=r"monitor='val/vrand' is not a validation metric; choose one of val/loss"):
        track_best(state, "val/vrand", {"val/loss": 0.5}, "min")
