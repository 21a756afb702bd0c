"""How long a run will take: an estimate after the first steps and the first epoch, plain progress lines, and
on a CPU, ways to make a long run shorter."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from unet_train.engine.runtime import cpu_has_fast_bf16

log = logging.getLogger(__name__)

LONG_RUN_S = 3600.0  # a CPU run estimated past this gets one line of ways to shorten it


def format_duration(seconds: float) -> str:
    """``"2 h 05 min"``, ``"7 min 30 s"``, ``"4.2 s"``: coarse enough to read, fine enough to compare."""
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    if round(seconds) < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"


@dataclass(frozen=True)
class Estimate:
    """The time left to the end of a run, and what ends it."""

    remaining_s: float
    total_s: float  # elapsed + remaining
    epoch_s: float  # the wall time taken for each epoch left (validation and checkpoints included)
    epochs_left: int
    by_max_time: bool  # trainer.max_time ends the run before trainer.max_epochs

    def describe(self, max_time: float | None) -> str:
        each = f"at {format_duration(self.epoch_s)} each"
        if self.by_max_time:
            one = self.epochs_left == 1
            left, verb = ("the epoch left", "is") if one else (f"the {self.epochs_left} epochs left", "are")
            return (
                f"Estimated time to the end of the run: {format_duration(self.remaining_s)}, stopped by "
                f"trainer.max_time={max_time:g} s before {left} ({each}) {verb} done"
            )
        left = format_duration(self.remaining_s)
        epochs = "epoch" if self.epochs_left == 1 else "epochs"
        return f"Estimated time to the end of the run: {left} ({self.epochs_left} more {epochs} {each})"


def estimate(
    epochs_done: int, first_epoch: int, max_epochs: int, elapsed_s: float, max_time: float | None, epoch_s: float
) -> Estimate | None:
    """The time to the end of the run if each epoch left takes ``epoch_s``; None when nothing is left.

    ``elapsed_s`` counts from the clock that ``trainer.max_time`` uses.
    """
    epochs_left = max_epochs - epochs_done
    if epochs_done <= first_epoch or epochs_left < 1:
        return None
    remaining = epochs_left * epoch_s
    by_max_time = max_time is not None and max_time - elapsed_s < remaining
    if by_max_time:
        assert max_time is not None
        remaining = max(max_time - elapsed_s, 0.0)
    if remaining <= 0:
        return None
    return Estimate(remaining, elapsed_s + remaining, epoch_s, epochs_left, by_max_time)


def steady_epoch_s(
    epoch_start: float, step_ends: list[float], epoch_end: float, steps_per_epoch: int | None = None
) -> float:
    """One epoch's wall time without the one-off costs of its first step (kernel set-up, first batch).

    The first step of a process often takes many times the others; the epoch is re-timed as its later
    steps' mean pace for every step, plus what followed the last step (validation, checkpoints). With
    ``steps_per_epoch``, the pace counts for a whole epoch's steps: a run resumed part-way through an
    epoch takes only that epoch's rest first.
    """
    steps = steps_per_epoch or len(step_ends)
    tail = epoch_end - step_ends[-1] if step_ends else 0.0
    if len(step_ends) >= 2:
        pace = (step_ends[-1] - step_ends[0]) / (len(step_ends) - 1)
    elif step_ends and steps_per_epoch:
        pace = step_ends[0] - epoch_start  # one step left: its own time, set-up included
    else:
        return epoch_end - epoch_start
    return pace * steps + tail


def shorter_run_hints(cfg: DictConfig, fast_bf16: bool) -> list[str]:
    """Overrides that shorten a CPU run of ``cfg``, each with what it does."""
    hints = []
    if "ISBI2012" in str(cfg.data.get("_target_", "")) and cfg.trainer.max_time is None:
        hints.append("experiment=isbi_cpu data.root=... (the 10-minute CPU recipe)")
    hints.append("trainer.max_time=1800 (stop after 30 min, best checkpoint kept)")
    # Only where float32 was asked for: precision=auto already measured bf16 here and kept the faster one.
    if fast_bf16 and str(cfg.trainer.precision) == "32":
        hints.append("trainer=cpu_bf16 (this CPU has native bf16)")
    width = cfg.model.get("base_channels")
    if isinstance(width, int) and width > 16:
        hints.append(f"model.base_channels={width // 2} (now {width}; about 4x fewer operations)")
    return hints


EARLY_STEPS = 5  # steps timed before the first estimate (the first one's set-up is left out of the pace)
EARLY_MIN_S = 30.0  # a first epoch that ends sooner than this waits for its own, fuller estimate


class RunClock:
    """Logs the estimated time to the end of the run, shows it on the epoch bar, and prints plain progress.

    The first estimate comes after :data:`EARLY_STEPS` steps (from their pace) when the first epoch
    has a while to go, and again after this process's first epoch (validation and checkpoints
    included). On a CPU, a run estimated past an hour also gets one line of :func:`shorter_run_hints`,
    with the first estimate. With ``every_s`` (output without progress bars: a cluster log, ``| tee``),
    :meth:`step_done` logs one plain line every ``every_s`` seconds: step, loss, images/s, time left.
    """

    def __init__(
        self, cfg: DictConfig, on_cpu: bool, start: float, first_epoch: int, steps_per_epoch: int | None = None,
        every_s: float | None = None, elapsed_before: float = 0.0,
    ) -> None:  # fmt: skip
        self.cfg, self.on_cpu, self.start, self.first_epoch = cfg, on_cpu, start, first_epoch
        # The run's time before this segment (a resume's): the estimate counts the run's time, as trainer.max_time.
        self.elapsed_before = elapsed_before
        self.steps_per_epoch = steps_per_epoch  # a whole epoch's steps (a resume may start part-way through one)
        self.epoch_start = start  # after the first epoch: where the later epochs' mean starts
        self.timing_steps = True  # during the first epoch: its optimizer steps' end times
        self.step_ends: list[float] = []
        self.advised = False  # the CPU hints are logged once, with the first estimate
        self.latest: tuple[Estimate, float] | None = None  # the newest estimate and when it was made
        self.every_s = every_s
        self.last_line, self.images_since = start, 0

    def step_done(self, now: float | None = None) -> None:
        """Call after each optimizer step (only the first epoch's steps are timed)."""
        if self.timing_steps:
            self.step_ends.append(time.monotonic() if now is None else now)
            if len(self.step_ends) == EARLY_STEPS:
                self._early_estimate(self.step_ends[-1])

    def _early_estimate(self, now: float) -> None:
        """Log the estimate from the first steps' pace, when the first epoch is long (validation not yet timed)."""
        steps, t = self.steps_per_epoch, self.cfg.trainer
        if not steps:
            return
        pace = (self.step_ends[-1] - self.step_ends[0]) / (len(self.step_ends) - 1)
        if pace * (steps - len(self.step_ends)) < EARLY_MIN_S:
            return
        elapsed, epochs_left = now - self.start, t.max_epochs - self.first_epoch  # the current epoch counts
        remaining = pace * (epochs_left * steps - len(self.step_ends))
        by_max_time = t.max_time is not None and t.max_time - elapsed < remaining
        if by_max_time:
            remaining = max(t.max_time - elapsed, 0.0)
        if remaining <= 0:
            return
        est = Estimate(remaining, elapsed + remaining, pace * steps, epochs_left, by_max_time)
        self.latest = (est, now)
        log.info("%s; from the first %d steps, validation not yet timed", est.describe(t.max_time), EARLY_STEPS)
        self._advise(est)

    def _advise(self, est: Estimate) -> None:
        if self.advised or not self.on_cpu or est.total_s <= LONG_RUN_S:
            return
        self.advised = True
        hints = shorter_run_hints(self.cfg, cpu_has_fast_bf16())
        total = format_duration(est.total_s)
        log.info("This CPU run takes about %s in all; to shorten it: %s", total, "; ".join(hints))

    def progress_line(
        self, epoch: int, step: int, loss: float | None, images: int, now: float | None = None
    ) -> str | None:
        """Count ``images`` trained; every ``every_s`` seconds, log and return one plain progress line."""
        if self.every_s is None:
            return None
        now = time.monotonic() if now is None else now
        self.images_since += images
        if now - self.last_line < self.every_s:
            return None
        rate = self.images_since / max(now - self.last_line, 1e-9)
        self.last_line, self.images_since = now, 0
        parts = [f"epoch {epoch + 1}/{self.cfg.trainer.max_epochs}", f"step {step}"]
        parts.append("loss -" if loss is None else f"loss {loss:.4f}")
        parts.append(f"{rate:.1f} images/s")
        if self.latest is not None:
            est, made = self.latest
            parts.append(f"about {format_duration(max(est.remaining_s - (now - made), 0.0))} left")
        line = "  ".join(parts)
        log.info("%s", line)
        return line

    def epoch_done(self, epochs_done: int, bar: Any = None, now: float | None = None) -> Estimate | None:
        """Call after each epoch (with its validation and checkpoints); logs after this process's first one."""
        t = self.cfg.trainer
        now = time.monotonic() if now is None else now
        elapsed = self.elapsed_before + now - self.start
        first = epochs_done == self.first_epoch + 1
        if first:
            epoch_s = steady_epoch_s(self.start, self.step_ends, now, self.steps_per_epoch)
        else:  # the mean of the later epochs: the first one's set-up costs are not repeated
            epoch_s = (now - self.epoch_start) / max(epochs_done - self.first_epoch - 1, 1)
        if first:
            self.epoch_start, self.step_ends, self.timing_steps = now, [], False
        est = estimate(epochs_done, self.first_epoch, t.max_epochs, elapsed, t.max_time, epoch_s)
        if est is None:
            if bar is not None:  # done: an estimate from the epoch before would stay on the full bar
                bar.set_description("epochs", refresh=False)
            return None
        self.latest = (est, now)
        if bar is not None:
            bar.set_description(f"epochs ({format_duration(est.remaining_s)} left)", refresh=False)
        if first:
            log.info("%s", est.describe(t.max_time))
            self._advise(est)
        return est
