"""trainer.max_time bounds an instance run's whole time: training, the final validation and the post-processing
tuning after it, in virtual seconds (tests/engine/clocked_loss.py: only training steps and post-processing cost
time)."""

from __future__ import annotations

import functools
import logging
import time

from unet_train.engine import run as run_module
from unet_train.engine.budget import TimeBudget
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit
from unet_train.objects import tune

from ..conftest import compose_config
from ..engine.clocked_loss import CLOCK
from .discs import write_discs
from .test_training import disc_overrides

POSTPROCESS_S = 0.02  # virtual seconds of one image's post-processing


def test_the_tuning_after_training_happens_inside_trainer_max_time(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(time, "monotonic", CLOCK)
    monkeypatch.setattr(run_module, "TimeBudget", functools.partial(TimeBudget, clock=CLOCK))
    apply = tune.apply

    def slow_apply(*args, **kwargs):
        CLOCK.now += POSTPROCESS_S
        return apply(*args, **kwargs)

    monkeypatch.setattr(tune, "apply", slow_apply)  # validation's object scores and each tuning point
    root = write_discs(tmp_path / "discs", 10)
    overrides = [
        *disc_overrides(root),
        "loss=bce",
        "loss._target_=tests.engine.clocked_loss.ClockedLoss",
        "+loss.step_s=0.5",
        "trust_config=[tests.engine.clocked_loss]",
        "trainer.max_time=6",
        "trainer.max_epochs=100",
        "objects.tune_time=30",  # more than the whole budget
        "trainer.background_save=false",
        "trainer.val_subset=2",  # of the 3 validation images: tuning scores the same 2
    ]
    with caplog.at_level(logging.INFO, logger="unet_train.objects.tune"):
        metrics = fit(compose_config(overrides), tmp_path / "run")
    entry = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", trust=True)["postprocess"]
    # The search (2 validation images x 0.02 s a point) got 10 % of the budget, 0.6 s: some 15 of its 175 points
    # (the grid and objects.seed_threshold=0.1), and the run's time, tuning included, stays within its 6 s.
    assert "Post-processing tuned on 2 validation image(s)" in caplog.text
    assert 5 <= entry["tried"] <= 30 and entry["total"] == 175
    assert "tuned/f1_50" in metrics and metrics["time_s"] <= 6.0
    assert metrics["steps"] <= 11  # 0.5 s steps and three validations: tuning took the 12th step's time
    # last.pt's clock includes the tuning, so a resume of it does not get that time back.
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", trust=True)
    assert last["state"]["elapsed"] == metrics["time_s"] and last["postprocess"] == entry
