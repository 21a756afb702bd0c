"""Resume and monitor defects of issue 18, each reproduced: a changed monitor, a run already complete,
a NaN first monitored value, monitors only some validations report, patience 0, the cosine jump."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unet_train.engine.checkpoint import load_checkpoint, save_atomic
from unet_train.engine.fit import fit
from unet_train.engine.schedulers import continue_schedule, cosine
from unet_train.errors import ConfigError

from ..conftest import TINY, compose_config

FAULTY = ["loss=bce", "loss._target_=tests.engine.faulty_loss.FaultyLoss"]


def lr_curve(folder) -> list[float]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/lr")]


def test_patience_zero_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.early_stopping_patience=0 must be at least 1 .* or null"):
        fit(compose_config([*TINY, "trainer.early_stopping_patience=0"]), tmp_path)
    assert not (tmp_path / "tensorboard").exists()


def test_an_unknown_monitor_is_refused_before_training_listing_every_valid_key(tmp_path):
    with pytest.raises(ConfigError, match=r"monitor='val/vrandd' is not a validation metric; choose one of") as err:
        fit(compose_config([*TINY, "monitor=val/vrandd"]), tmp_path)
    for key in ("val/dice", "val/loss", "val/pixel_error", "val/vrand", "val/vinfo", "val/hd95"):
        assert key in str(err.value)
    assert not (tmp_path / "tensorboard").exists()  # nothing ran


def test_challenge_metrics_are_computed_only_when_monitored(tmp_path):
    metrics = fit(compose_config([*TINY, "trainer.max_epochs=1", "monitor=val/hd95"]), tmp_path / "hd95")
    assert metrics["best/val/hd95"] == metrics["val/hd95"] >= 0 and "val/vrand" in metrics
    plain = fit(compose_config([*TINY, "trainer.max_epochs=1"]), tmp_path / "dice")
    assert "val/vrand" not in plain and "val/hd95" not in plain


def test_a_nan_first_monitored_value_is_logged_and_training_goes_on(tmp_path):
    cfg = compose_config([*TINY, *FAULTY, "+loss.nan_eval=true", "monitor=val/loss"])
    metrics = fit(cfg, tmp_path)
    assert metrics["epochs"] == 2 and math.isnan(metrics["val/loss"]) and math.isnan(metrics["best/val/loss"])
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt", trust=["tests.engine.faulty_loss"])
    assert last["state"]["epoch"] == 2
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


def test_resuming_with_another_monitor_starts_a_fresh_best(tmp_path):
    fit(compose_config([*TINY, "trainer.max_epochs=1"]), tmp_path / "a")
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["state"]["best"] = 0.0  # a Dice of 0: as a pixel error it would never be beaten
    save_atomic(ckpt, last)
    cfg = compose_config([*TINY, f"ckpt={last}", "monitor=val/pixel_error"])
    metrics = fit(cfg, tmp_path / "b")
    assert metrics["best/val/pixel_error"] == metrics["val/pixel_error"] > 0
    assert metrics["best_epoch"] == 2
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "best.pt")["state"]["best_epoch"] == 2


def test_resuming_a_finished_run_keeps_its_metrics(tmp_path):
    first = fit(compose_config(TINY), tmp_path)
    written = (tmp_path / "metrics.json").read_bytes()
    again = fit(compose_config([*TINY, f"ckpt={tmp_path / 'checkpoints' / 'last.pt'}"]), tmp_path)
    assert (tmp_path / "metrics.json").read_bytes() == written
    assert again == json.loads(written) and again["val/dice"] == pytest.approx(first["val/dice"])


def test_resuming_with_more_epochs_continues_the_cosine_schedule_without_a_jump(tmp_path):
    fit(compose_config(TINY), tmp_path / "a")  # cosine over 4 steps
    before = lr_curve(tmp_path / "a" / "tensorboard")
    cfg = compose_config([*TINY, f"ckpt={tmp_path / 'a' / 'checkpoints' / 'last.pt'}", "trainer.max_epochs=4"])
    fit(cfg, tmp_path / "b")
    after = lr_curve(tmp_path / "b" / "tensorboard")
    assert len(after) == 4 and max(after) <= before[-1] * (1 + 1e-6)  # no jump back up


def test_continue_schedule_stretches_the_rest_and_leaves_an_unchanged_plan_alone():
    def scheduler(total: int):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return cosine(optimizer, total_steps=total, min_lr_ratio=0.1)

    original, same = scheduler(10), scheduler(10)
    continue_schedule(same, original.lr_lambdas, done=4, planned_before=10, planned_now=10)
    assert [same.lr_lambdas[0](s) for s in range(12)] == [original.lr_lambdas[0](s) for s in range(12)]
    longer = scheduler(20)
    continue_schedule(longer, original.lr_lambdas, done=4, planned_before=10, planned_now=16)
    factor, old = longer.lr_lambdas[0], original.lr_lambdas[0]
    assert factor(4) == pytest.approx(old(4))  # goes on from where the old plan was
    assert factor(10) == pytest.approx(old(7))  # half-way through the rest: 6 of 12 steps, 3 of the old 6
    assert factor(16) == pytest.approx(0.1) and factor(30) == pytest.approx(0.1)


@pytest.mark.slow
def test_a_resume_of_a_stretched_schedule_keeps_the_stretch(tmp_path):
    # A: a 4-epoch plan (8 steps) stopped by max_time after one step; B: resumed with 8 epochs (the rest
    # stretched over 16 steps) and stopped again; C: B resumed with the same 8 epochs must go on along the
    # stretched schedule, as D (A resumed once with 8 epochs, uninterrupted) does, not restart a fresh plan.
    fit(compose_config([*TINY, "trainer.max_epochs=4", "trainer.max_time=1e-9"]), tmp_path / "a")
    a = tmp_path / "a" / "checkpoints" / "last.pt"
    fit(compose_config([*TINY, f"ckpt={a}", "trainer.max_epochs=8", "trainer.max_time=1e-9"]), tmp_path / "b")
    b = tmp_path / "b" / "checkpoints" / "last.pt"
    assert load_checkpoint(b)["state"]["step"] == 2
    fit(compose_config([*TINY, f"ckpt={b}", "trainer.max_epochs=8"]), tmp_path / "c")
    fit(compose_config([*TINY, f"ckpt={a}", "trainer.max_epochs=8"]), tmp_path / "d")
    resumed_twice = lr_by_step(tmp_path / "c" / "tensorboard")
    resumed_once = lr_by_step(tmp_path / "d" / "tensorboard")
    assert list(resumed_twice) == list(range(3, 15)) and list(resumed_once) == list(range(2, 16))
    assert [resumed_twice[s] for s in range(3, 15)] == pytest.approx([resumed_once[s] for s in range(3, 15)])


def lr_by_step(folder) -> dict[int, float]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/lr")}
