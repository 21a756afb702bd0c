"""trainer.val_share: a run that measures a validation dearer than planned validates less often, logs why, stores
the decision in its checkpoint (a resume validates on the same epochs) and takes rank 0's figures under DDP."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.distributed import Distributed
from unet_train.engine.fit import fit
from unet_train.engine.run import TrainState
from unet_train.engine.val_schedule import ValidationSchedule
from unet_train.errors import ConfigError

from ..conftest import TINY, compose_config
from .test_faults import max_abs_diff

TRUST = ["tests.engine.slow_loss"]


def trainer(val_every=1, val_share=0.1):
    return OmegaConf.create({"val_every": val_every, "val_share": val_share, "max_time": 600.0})


def test_a_validation_dearer_than_planned_spaces_the_validations(caplog):
    state = TrainState(epoch=1)
    schedule = ValidationSchedule(trainer(), state, Distributed(), steps_per_epoch=30, images_per_step=4)
    assert schedule.due(1) and schedule.due(2)  # as trainer.val_every says until something was measured
    # A validation of 4 s against steps of 0.5 s (8 images/s at 4 per step): within a share of 0.1 an interval
    # must hold 4 * 0.9 / 0.1 = 36 s of training, 72 steps: 3 epochs of 30.
    with caplog.at_level(logging.INFO, logger="unet_train.engine.val_schedule"):
        assert schedule.after_validation(4.0, images_per_s=8.0) == 3
    assert (state.val_every, state.validated_epoch) == (3, 1)
    assert [e for e in range(2, 7) if schedule.due(e)] == [4, 5, 6]  # 3 epochs after the last validation
    assert (
        "A validation takes 4.0 s and a step 0.50 s: validating every 90 steps (3 epochs) instead of every 30, "
        "so validation stays within trainer.val_share=0.1 of the training time"
    ) in caplog.text


def test_a_machine_slower_at_both_keeps_the_interval_and_nothing_is_logged(caplog):
    state = TrainState(epoch=1)
    schedule = ValidationSchedule(trainer(), state, Distributed(), steps_per_epoch=100, images_per_step=4)
    with caplog.at_level(logging.INFO, logger="unet_train.engine.val_schedule"):
        assert schedule.after_validation(1.0, images_per_s=40.0) == 1  # 9 s of training wanted: 90 steps of 0.1 s
        assert schedule.after_validation(2.0, images_per_s=20.0) == 1  # both twice as slow: the same share
    assert "validating every" not in caplog.text


def test_without_a_share_the_interval_is_trainer_val_every():
    state = TrainState(epoch=2)
    schedule = ValidationSchedule(trainer(val_every=2, val_share=None), state, Distributed(), 10, 4)
    assert schedule.after_validation(100.0, images_per_s=1.0) == 2 and state.val_every == 0
    assert [e for e in range(1, 7) if schedule.due(e)] == [2, 4, 6]


def test_every_rank_takes_rank_zeros_figures():
    class Rank1(Distributed):
        def agree_values(self, values):  # what the broadcast brings: rank 0's validation time and speed
            return (4.0, 8.0)

    state = TrainState(epoch=1)
    schedule = ValidationSchedule(trainer(), state, Rank1(), steps_per_epoch=30, images_per_step=4)
    assert schedule.after_validation(0.1, images_per_s=1000.0) == 3  # its own clock would have said 1


def test_a_share_outside_zero_one_and_an_empty_subset_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer\.val_share=1\.5 must be a share of the training time in \(0, 1\)"):
        fit(compose_config([*TINY, "trainer.val_share=1.5"]), tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer\.val_subset=0 must be a number of validation images"):
        fit(compose_config([*TINY, "trainer.val_subset=0"]), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


# One-step epochs of ~0.3 s (sleeping: about the same on a loaded machine) and validations of ~0.45 s (one batch
# of the 2 images): with val_share 0.5 an interval must hold ~0.45 s of training, 1.3-1.7 steps: 2 epochs.
SLOW_VALIDATION = [
    *TINY,
    "loss=bce",
    "loss._target_=tests.engine.slow_loss.SlowLoss",
    "+loss.sleep_s=0.5",  # sleeps well above the tiny model's compute, so a loaded machine decides the same
    "+loss.eval_sleep_s=0.9",
    "data.num_train=4",
    "data.val_batch_size=2",
    "trust_config=[tests.engine.slow_loss]",
    "trainer.val_share=0.5",
    "trainer.deterministic=true",
    "sched=none",
    "data.num_workers=0",
]


def validated_steps(run_dir) -> list[int]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars("val/dice")]


@pytest.mark.slow
def test_a_slow_validation_is_spaced_out_and_a_resume_keeps_the_decision(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="unet_train.engine.val_schedule"):
        fit(compose_config([*SLOW_VALIDATION, "trainer.max_epochs=6"]), tmp_path / "a")
    assert "validating every 2 steps (2 epochs) instead of every 1" in caplog.text
    # Epoch 1 validates (nothing measured yet), then every second epoch, and the last one always.
    assert validated_steps(tmp_path / "a") == [1, 3, 5, 6]
    state = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt", trust=TRUST)["state"]
    assert (state["val_every"], state["validated_epoch"]) == (2, 6)

    # The same run stopped after epoch 3, then resumed: the stored interval and last validation carry on
    # (without them the resume would validate after epoch 4), and the weights are the uninterrupted run's.
    fit(compose_config([*SLOW_VALIDATION, "trainer.max_epochs=3"]), tmp_path / "b")
    last = tmp_path / "b" / "checkpoints" / "last.pt"
    fit(compose_config([*SLOW_VALIDATION, "trainer.max_epochs=6", f"ckpt={last}"]), tmp_path / "b")
    assert validated_steps(tmp_path / "b") == [1, 3, 5, 6]
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt", trust=TRUST)["model"]
    b = load_checkpoint(last, trust=TRUST)["model"]
    assert max_abs_diff(a, b) <= 1e-6
    assert torch.equal(a[next(iter(a))], b[next(iter(b))])


@pytest.mark.slow
def test_a_cold_first_validation_does_not_space_out_the_later_ones(tmp_path, caplog):
    """The first validation pays one-time costs: the interval it sets goes back once a warm one is measured."""
    cold = [*SLOW_VALIDATION, "+loss.eval_sleep_s=0.02", "+loss.cold_eval_sleep_s=3.0", "trainer.max_epochs=12"]
    with caplog.at_level(logging.INFO, logger="unet_train.engine.val_schedule"):
        fit(compose_config([o for o in cold if not o.startswith("+loss.eval_sleep_s=0.9")]), tmp_path)
    changes = [line for line in caplog.messages if "instead of every" in line]
    assert "instead of every 1," in changes[0]  # the cold one spaced them out ...
    assert "validating every 1 steps (1 epoch) instead of every" in changes[-1]  # ... the warm ones undid it
    assert validated_steps(tmp_path)[-3:] == [10, 11, 12]


def test_the_validation_subset_is_one_fixed_sample_shared_by_the_ranks():
    from unet_train.engine.validation import validation_sampler, validation_subset

    sample = validation_subset(159, 6)
    assert sample is not None and len(set(sample)) == 6 and sample == sorted(sample) and max(sample) < 159
    assert validation_subset(159, 6) == sample  # the same images every time (and for every seed of a sweep)
    assert validation_subset(5, 6) is None and validation_subset(5, None) is None  # all of them

    shards = [list(validation_sampler(Distributed(rank=r, world_size=2), 159, 6) or []) for r in (0, 1)]
    assert shards == [sample[0::2], sample[1::2]]  # each rank its share, each image once


def test_a_run_validates_its_subset_and_reserves_time_for_it_alone(tmp_path):
    from unet_train.engine.fit import validated
    from unet_train.engine.run import build_run
    from unet_train.engine.validation import validation_subset

    cfg = compose_config([*TINY, "data.num_val=6", "trainer.val_subset=2", "trainer.max_time=60"])
    run = build_run(cfg)
    names = [name for batch in run.val_loader for name in batch["name"]]
    split = run.data.split("val")
    assert names == [split.names[i] for i in validation_subset(6, 2)]
    assert run.budget.val_pixels == 2 * 64 * 64  # the final validation's reserve: two images, not six
    assert validated(run) == "2 of 6 (trainer.val_subset, a fixed sample)"  # what the start of the log says
