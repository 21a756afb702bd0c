"""A budgeted run stopped inside an epoch: the rate at its floor at the stop, a small reserve for a validation
subset, and the exact resume of such a run (issue 28), in virtual seconds (tests/engine/clocked_loss.py)."""

from __future__ import annotations

import functools
import math
import time

import pytest

from unet_train.engine import run as run_module
from unet_train.engine.budget import TimeBudget
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit
from unet_train.errors import RunInterrupted

from ..conftest import TINY, compose_config, progress
from .clocked_loss import CLOCK
from .test_faults import max_abs_diff
from .test_resume_and_monitor import lr_by_step

TRUST = ["tests.engine.clocked_loss"]
# 0.1 virtual seconds per step, 6 virtual seconds: one epoch of 250 steps is cut by the budget.
BUDGETED = [
    *TINY,
    "loss=bce",
    "loss._target_=tests.engine.clocked_loss.ClockedLoss",
    "+loss.step_s=0.1",
    "trust_config=[tests.engine.clocked_loss]",
    "trainer.max_time=6",
    "trainer.max_epochs=100",
    "data.samples_per_epoch=1000",
    "data.num_val=6",
    "trainer.val_subset=1",
    "trainer.deterministic=true",
    "data.num_workers=0",
    "trainer.background_save=false",
]


@pytest.fixture
def virtual_time(monkeypatch):
    """Every clock of the run reads :data:`CLOCK`: only training steps take time."""
    monkeypatch.setattr(time, "monotonic", CLOCK)
    monkeypatch.setattr(run_module, "TimeBudget", functools.partial(TimeBudget, clock=CLOCK))


def test_a_run_stopped_inside_an_epoch_ends_at_its_floor_and_resumes_exactly(tmp_path, virtual_time):
    whole = fit(compose_config(BUDGETED), tmp_path / "a")
    steps = int(whole["steps"])
    assert whole["epochs"] == 1 and steps < 250  # the budget stopped the first epoch
    # The reserve held back one image's validation (trainer.val_subset=1) at ~0.6 of a step's cost per pixel:
    # 64 x 64 px against 4 crops of 32 px, ~0.06 s; and a checkpoint write of no virtual time. So the run trains
    # to within a step or two of its 6 s: 58-60 steps of 0.1 s.
    assert 58 <= steps <= 60
    rates = lr_by_step(tmp_path / "a" / "tensorboard")
    base, floor = 3e-3, 3e-3 * 0.01  # quickstart's optim.lr, cosine's min_lr_ratio
    one_step_before = floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * (1 - 1 / steps)))
    assert rates[steps] <= one_step_before * (1 + 1e-6) and rates[steps] == pytest.approx(floor, rel=0.05)

    # The same run stopped by SIGTERM during step 20, then resumed: it continues identically.
    with pytest.raises(RunInterrupted):
        fit(compose_config([*BUDGETED, "+loss.signal_calls=[20]"]), tmp_path / "b")
    last = tmp_path / "b" / "checkpoints" / "last.pt"
    assert load_checkpoint(last, trust=TRUST)["state"]["step"] == 20
    resumed = fit(compose_config([*BUDGETED, f"ckpt={last}"]), tmp_path / "b")
    assert resumed["steps"] == steps
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt", trust=TRUST)
    b = load_checkpoint(last, trust=TRUST)
    assert max_abs_diff(a["model"], b["model"]) <= 1e-6
    assert progress(a["state"]) == progress(b["state"])
    assert lr_by_step(tmp_path / "b" / "tensorboard") == pytest.approx(rates, rel=1e-9)


def test_a_validation_that_spends_the_rest_of_the_budget_is_the_final_one(tmp_path, virtual_time):
    # Epochs of 40 steps (4 virtual s); the first validation takes 1.5 s and ends at 5.5 s, past the 6 s budget less
    # the reserve it now measures. The run stops there: no step past it and no second validation (before: one more
    # step, then a final validation, ending at 7.1 s).
    cfg = compose_config([*BUDGETED, "data.samples_per_epoch=160", "+loss.val_s=1.5", "trainer.val_every=1"])
    start = CLOCK.now
    result = fit(cfg, tmp_path / "run")
    assert (result["epochs"], result["steps"]) == (1, 40)
    assert CLOCK.now - start == pytest.approx(5.5) and result["time_s"] == pytest.approx(5.5)
    assert result["validation_s"] == pytest.approx(1.5)  # one validation
