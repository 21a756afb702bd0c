"""The estimated time to the end of a run: the arithmetic, the log lines, and a real run's train.log."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from datetime import datetime

import pytest
from omegaconf import OmegaConf

from unet_train.engine import eta
from unet_train.engine.eta import RunClock, estimate, format_duration, shorter_run_hints, steady_epoch_s

from ..conftest import REPO, TINY


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(4.24, "4.2 s"), (59.96, "1 min 00 s"), (450, "7 min 30 s"), (3599.6, "1 h 00 min"), (7500, "2 h 05 min")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_estimate_extrapolates_the_epoch_time():
    est = estimate(epochs_done=1, first_epoch=0, max_epochs=10, elapsed_s=40.0, max_time=None, epoch_s=30.0)
    assert est is not None
    assert (est.remaining_s, est.total_s, est.epoch_s, est.epochs_left, est.by_max_time) == (270, 310, 30, 9, False)
    resumed = estimate(epochs_done=5, first_epoch=4, max_epochs=10, elapsed_s=20.0, max_time=None, epoch_s=20.0)
    assert resumed is not None and (resumed.remaining_s, resumed.epochs_left) == (100, 5)
    assert estimate(epochs_done=4, first_epoch=4, max_epochs=10, elapsed_s=1.0, max_time=None, epoch_s=1.0) is None


def test_estimate_stops_at_max_time_when_that_comes_first():
    est = estimate(epochs_done=1, first_epoch=0, max_epochs=10, elapsed_s=30.0, max_time=100.0, epoch_s=30.0)
    assert est is not None and est.by_max_time and est.remaining_s == 70 and est.total_s == 100
    later = estimate(epochs_done=1, first_epoch=0, max_epochs=3, elapsed_s=30.0, max_time=100.0, epoch_s=30.0)
    assert later is not None and not later.by_max_time and later.remaining_s == 60
    assert estimate(epochs_done=10, first_epoch=0, max_epochs=10, elapsed_s=30.0, max_time=None, epoch_s=3.0) is None
    assert estimate(epochs_done=2, first_epoch=0, max_epochs=10, elapsed_s=101.0, max_time=100.0, epoch_s=3.0) is None


def test_the_first_epoch_is_timed_without_its_first_step():
    # The first step ends 5 s in (set-up), the next three 1 s apart, then 2 s of validation and checkpoints.
    assert steady_epoch_s(0.0, [5.0, 6.0, 7.0, 8.0], 10.0) == 4 * 1.0 + 2.0
    assert steady_epoch_s(0.0, [5.0], 10.0) == 10.0  # one step per epoch: nothing to tell apart


def test_later_epochs_use_their_own_mean():
    clock = RunClock(cfg_for(), on_cpu=False, start=0.0, first_epoch=0)
    for t in (50.0, 60.0, 70.0):  # 3 steps: the first takes 50 s, then 10 s each; 20 s of validation
        clock.step_done(now=t)
    first = clock.epoch_done(1, now=90.0)
    assert first is not None and first.epoch_s == 3 * 10.0 + 20.0
    clock.step_done(now=100.0)  # only the first epoch's steps are timed
    second = clock.epoch_done(2, now=140.0)
    third = clock.epoch_done(3, now=200.0)
    assert second is not None and second.epoch_s == 50.0 and second.remaining_s == 48 * 50.0
    assert third is not None and third.epoch_s == 55.0 and third.remaining_s == 47 * 55.0


def cfg_for(base_channels: int = 64, max_time: float | None = None, precision: str = "32"):
    return OmegaConf.create(
        {
            "data": {"_target_": "unet_train.data.ISBI2012"},
            "model": {"base_channels": base_channels},
            "trainer": {"max_epochs": 50, "max_time": max_time, "precision": precision},
        }
    )


class Bar:
    def __init__(self) -> None:
        self.descriptions: list[str] = []

    def set_description(self, text: str, refresh: bool = True) -> None:
        self.descriptions.append(text)


def test_clock_logs_once_and_suggests_shorter_runs_on_a_long_cpu_run(caplog, monkeypatch):
    monkeypatch.setattr(eta, "cpu_has_fast_bf16", lambda: True)
    clock, bar = RunClock(cfg_for(), on_cpu=True, start=1000.0, first_epoch=0), Bar()
    with caplog.at_level(logging.INFO, logger="unet_train.engine.eta"):
        clock.epoch_done(1, bar, now=1500.0)  # 500 s an epoch, 49 left
        clock.epoch_done(2, bar, now=2000.0)
    assert [r.getMessage() for r in caplog.records] == [
        "Estimated time to the end of the run: 6 h 48 min (49 more epochs at 8 min 20 s each)",
        "This CPU run takes about 6 h 57 min in all; to shorten it: experiment=isbi_cpu data.root=... (the "
        "10-minute CPU recipe); trainer.max_time=1800 (stop after 30 min, best checkpoint kept); "
        "trainer=cpu_bf16 (this CPU has native bf16); model.base_channels=32 (now 64; about 4x fewer operations)",
    ]
    assert bar.descriptions == ["epochs (6 h 48 min left)", "epochs (6 h 40 min left)"]


def test_clock_suggests_only_what_applies(caplog, monkeypatch):
    monkeypatch.setattr(eta, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.INFO, logger="unet_train.engine.eta"):
        RunClock(cfg_for(16, max_time=7200.0), on_cpu=True, start=0.0, first_epoch=0).epoch_done(1, now=600.0)
        RunClock(cfg_for(), on_cpu=False, start=0.0, first_epoch=0).epoch_done(1, now=600.0)  # a GPU run
        RunClock(cfg_for(), on_cpu=True, start=0.0, first_epoch=0).epoch_done(1, now=60.0)  # 50 min in all
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "Estimated time to the end of the run: 1 h 50 min, stopped by trainer.max_time=7200 s before the 49 "
        "epochs left (at 10 min 00 s each) are done",
        "This CPU run takes about 2 h 00 min in all; to shorten it: trainer.max_time=1800 (stop after 30 min, best "
        "checkpoint kept)",
        "Estimated time to the end of the run: 8 h 10 min (49 more epochs at 10 min 00 s each)",
        "Estimated time to the end of the run: 49 min 00 s (49 more epochs at 1 min 00 s each)",
    ]


@pytest.mark.parametrize(("precision", "hinted"), [("32", True), ("auto", False), ("bf16", False)])
def test_bf16_is_suggested_only_to_a_float32_run(precision, hinted):
    """precision=auto (trainer=cpu's default) measured bf16 against float32 and kept the faster: suggesting
    trainer=cpu_bf16 would repeat a choice made, or undo one measured."""
    hints = shorter_run_hints(cfg_for(precision=precision), fast_bf16=True)
    assert ("trainer=cpu_bf16 (this CPU has native bf16)" in hints) is hinted


def parse_duration(text: str) -> float:
    """The inverse of format_duration (to its precision)."""
    if match := re.fullmatch(r"(\d+) h (\d+) min", text):
        return int(match[1]) * 3600 + int(match[2]) * 60
    if match := re.fullmatch(r"(\d+) min (\d+) s", text):
        return int(match[1]) * 60 + int(match[2])
    return float(text.removesuffix(" s"))


@pytest.mark.parametrize("seconds", [4.2, 75, 7500])
def test_parse_duration_inverts_format_duration(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def log_time(line: str) -> float:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@pytest.mark.slow  # one unet-train process
def test_train_log_states_the_remaining_time_within_a_factor_of_two(tmp_path):
    # Each epoch: 2 steps that sleep 0.15 s each (sleep needs no CPU, so a loaded machine keeps the length).
    slow = ["loss=bce", "loss._target_=tests.engine.slow_loss.SlowLoss", "+loss.sleep_s=0.15"]
    args = [*TINY, "trainer.max_epochs=6", "data.batch_size=4", "data.num_train=8", *slow]
    args.append("trainer.progress_every_s=0.2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # lets the CLI import the test-only loss
    result = subprocess.run(
        [sys.executable, "-m", "unet_train.train", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (log_file,) = tmp_path.glob("outputs/*/*/train.log")
    lines = log_file.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "Estimated time to the end of the run" in line)
    assert "] - epoch 1 " in lines[at - 1]  # right after the first epoch's line
    assert sum("Estimated time" in line for line in lines) == 1
    match = re.search(r"run: (.+) \(5 more epochs at (.+) each\)$", lines[at])
    assert match, lines[at]
    estimated = parse_duration(match[1])
    # Not a terminal: plain progress lines, the first before the first estimate (the loss is read every step).
    plain = [i for i, line in enumerate(lines) if re.search(r"\] - epoch [1-6]/6  step \d+  loss \d\.\d{4}  ", line)]
    assert plain and plain[0] < at and re.search(r"images/s  about .+ left$", lines[plain[-1]]), lines
    end = next(line for line in lines if "Stopped by max_epochs after 6 epochs" in line)
    real = log_time(end) - log_time(lines[at])
    assert real / 2 <= estimated <= real * 2, (estimated, real)


def test_a_resume_part_way_through_an_epoch_times_a_whole_epoch():
    # Resumed after batch 8 of 10: the first epoch of this process takes its last 2 steps only (the first
    # after 1 s of set-up, the next 1 s later) and 0.5 s of validation; a whole epoch takes 10 steps.
    clock = RunClock(cfg_for(), on_cpu=False, start=0.0, first_epoch=4, steps_per_epoch=10)
    for t in (1.0, 2.0):
        clock.step_done(now=t)
    est = clock.epoch_done(5, now=2.5)
    assert est is not None and est.epoch_s == 10 * 1.0 + 0.5 and est.remaining_s == 45 * 10.5
    assert steady_epoch_s(0.0, [3.0], 4.0, steps_per_epoch=4) == 4 * 3.0 + 1.0  # one step left: its own time


def test_a_resumed_run_estimates_on_the_budget_s_clock():
    # Issue 24: 18 s of the run's 20 s budget were spent before the resume; the first epoch of this segment
    # takes 1 s. 1 s is left, not 19 s ("9.9 s left" when 2 s were left).
    clock = RunClock(cfg_for(max_time=20.0), on_cpu=False, start=0.0, first_epoch=6, elapsed_before=18.0)
    clock.step_done(now=0.5)
    est = clock.epoch_done(7, now=1.0)
    assert est is not None and est.by_max_time and est.remaining_s == 1.0 and est.total_s == 20.0


def test_a_long_first_epoch_is_estimated_after_its_first_steps_with_the_cpu_advice(caplog, monkeypatch):
    monkeypatch.setattr(eta, "cpu_has_fast_bf16", lambda: False)
    clock = RunClock(cfg_for(), on_cpu=True, start=0.0, first_epoch=0, steps_per_epoch=100, every_s=60.0)
    lines = []
    with caplog.at_level(logging.INFO, logger="unet_train.engine.eta"):
        # The first step ends 20 s in (set-up), the next four 12 s apart: 50 epochs x 100 steps, 5 done.
        for step, t in enumerate((20.0, 32.0, 44.0, 56.0, 68.0), start=1):
            clock.step_done(now=t)
            lines.append(clock.progress_line(0, step, None if step < 4 else 0.25, images=4, now=t))
        for step in range(6, 101):  # the rest of the epoch, then 60 s of validation
            clock.step_done(now=20.0 + 12.0 * (step - 1))
        assert clock.epoch_done(1, now=1268.0) is not None
    assert lines == [None, None, None, None, "epoch 1/50  step 5  loss 0.2500  0.3 images/s  about 16 h 39 min left"]
    assert [r.getMessage() for r in caplog.records] == [
        # 4995 steps left at 12 s: 59940 s; the run in all 68 + 59940 s.
        "Estimated time to the end of the run: 16 h 39 min (50 more epochs at 20 min 00 s each); from the first 5 "
        "steps, validation not yet timed",
        "This CPU run takes about 16 h 40 min in all; to shorten it: experiment=isbi_cpu data.root=... (the "
        "10-minute CPU recipe); trainer.max_time=1800 (stop after 30 min, best checkpoint kept); "
        "model.base_channels=32 (now 64; about 4x fewer operations)",
        lines[-1],
        "Estimated time to the end of the run: 17 h 09 min (49 more epochs at 21 min 00 s each)",  # no advice again
    ]


def test_a_short_first_epoch_waits_for_its_end_and_one_epoch_is_singular(caplog):
    clock = RunClock(cfg_for(), on_cpu=False, start=0.0, first_epoch=0, steps_per_epoch=10)
    with caplog.at_level(logging.INFO, logger="unet_train.engine.eta"):
        for t in (1.0, 2.0, 3.0, 4.0, 5.0):  # 5 steps left at 1 s: under EARLY_MIN_S
            clock.step_done(now=t)
    assert caplog.records == []
    one = estimate(epochs_done=1, first_epoch=0, max_epochs=2, elapsed_s=30.0, max_time=None, epoch_s=30.0)
    assert one is not None and one.describe(None).endswith("(1 more epoch at 30.0 s each)")
    cut = estimate(epochs_done=1, first_epoch=0, max_epochs=2, elapsed_s=30.0, max_time=50.0, epoch_s=30.0)
    assert cut is not None and cut.describe(50.0).endswith("before the epoch left (at 30.0 s each) is done")


def test_the_epoch_bar_drops_its_estimate_when_the_run_is_done():
    clock, bar = RunClock(cfg_for(), on_cpu=False, start=0.0, first_epoch=48), Bar()
    clock.epoch_done(49, bar, now=10.0)
    clock.epoch_done(50, bar, now=20.0)
    assert bar.descriptions == ["epochs (10.0 s left)", "epochs"]
