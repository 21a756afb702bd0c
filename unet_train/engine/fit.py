"""The training loop: ``fit(cfg, run_dir)`` trains, validates, checkpoints and logs one run.

The parts, in the order a run meets them: :mod:`~unet_train.engine.run` (the run's objects and their
resume), :mod:`~unet_train.engine.checkpointer` (where checkpoints are written),
:mod:`~unet_train.engine.guard` (non-finite losses), :mod:`~unet_train.engine.step` (one optimizer
step), :mod:`~unet_train.engine.epoch` (the step loop), :mod:`~unet_train.engine.validation` and
:mod:`~unet_train.engine.stopping` (when a run stops).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from unet_train.config import TrainerConfig
from unet_train.engine.background_save import SaveEvery
from unet_train.engine.checkpointer import Checkpointer
from unet_train.engine.epoch import train_epoch
from unet_train.engine.eta import RunClock
from unet_train.engine.guard import NonFiniteGuard
from unet_train.engine.objects import plan_tuning, tune_after_training
from unet_train.engine.preflight import check_numbers
from unet_train.engine.run import COMPILE_MODES, Run, TrainState, build_run
from unet_train.engine.signals import GracefulStop, stop_workers
from unet_train.engine.step import TrainStep
from unet_train.engine.stopping import StopRules
from unet_train.engine.tensorboard import hparams
from unet_train.engine.val_schedule import ValidationSchedule
from unet_train.engine.validation import monitor_mode, validate_epoch
from unet_train.errors import ConfigError
from unet_train.safe_io import confined, write_atomic

__all__ = ["TrainState", "fit", "monitor_mode", "show_progress", "validate_config"]

log = logging.getLogger(__name__)


def fit(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Train the model of ``cfg`` and write checkpoints, TensorBoard logs and ``metrics.json`` under ``run_dir``.

    Returns the final metrics; ``metrics[cfg.monitor]`` is the best monitored value.
    """
    validate_config(cfg)
    run_dir, tcfg = Path(run_dir), cfg.trainer
    run = build_run(cfg)  # resumed from cfg.ckpt when given
    state = run.state
    if state.epoch >= tcfg.max_epochs:
        return already_complete(run, run_dir)
    checkpoints = Checkpointer(run_dir / "checkpoints", run)
    # Events after the checkpoint's step come from the lost part of a killed run: drop them.
    # SummaryWriter creates its own files: its folder must not be a link out of the run folder.
    log_dir = confined(run_dir / "tensorboard", run_dir)
    writer = run.dist.summary_writer(log_dir, purge_step=state.step + 1 if state.step else None)
    guard = NonFiniteGuard.for_run(run, checkpoints.last)
    step = TrainStep.for_run(run, guard)
    progress = show_progress(tcfg.progress) and run.dist.is_main
    last_metrics: dict[str, float] = {}
    train_loss, stop_reason = math.nan, "max_epochs"
    log_start(run)

    try:
        with logging_redirect_tqdm(), GracefulStop() as signals:
            # The run's one clock, from the checkpoint's time on resume: the stop, the estimate and time_s.
            budget = run.budget
            plan_tuning(run)  # an instance run's tuning after training is held back inside trainer.max_time
            budget.start()
            stop = StopRules(tcfg, signals, run.dist, budget)
            images_per_step = int(cfg.data.batch_size) * run.dist.world_size
            validations = ValidationSchedule(tcfg, state, run.dist, run.steps_per_epoch, images_per_step)
            on_cpu = run.runtime.device.type == "cpu"
            # Without bars (a cluster log, | tee), a plain progress line every trainer.progress_every_s seconds.
            every = tcfg.get("progress_every_s", TrainerConfig.progress_every_s)
            every = None if progress or not run.dist.is_main else every
            clock = RunClock(  # time to the end, on the budget's clock (a resume's earlier segments included)
                cfg, on_cpu, budget.started, state.epoch, run.steps_per_epoch, every,
                elapsed_before=budget.elapsed_before,
            )  # fmt: skip
            epochs = tqdm(
                range(state.epoch, tcfg.max_epochs), desc="epochs", disable=not progress, initial=state.epoch,
                total=tcfg.max_epochs, dynamic_ncols=True,
            )  # fmt: skip
            for epoch in epochs:
                result = train_epoch(run, epoch, step, guard, stop, checkpoints, writer, progress, clock)
                train_loss = train_loss if result.loss is None else result.loss
                out_of_time = result.out_of_time
                last_epoch = out_of_time or state.epoch == tcfg.max_epochs
                # A validation that would leave no room for the final one in trainer.max_time is skipped.
                due = validations.due(state.epoch) and run.dist.agree(budget.allows_validation())
                if due or last_epoch:
                    started = time.monotonic()
                    last_metrics = validate_epoch(run, writer, checkpoints, epochs, train_loss, result.images_per_s)
                    seconds = time.monotonic() - started
                    budget.record_validation(seconds)  # the longest: the reserve for the final validation
                    state.validation_total_s += seconds
                    # trainer.val_share: validate less often when validation costs more than planned. The latest
                    # validation, not the longest: the first one pays one-time costs (kernels for a new shape).
                    validations.after_validation(seconds, result.images_per_s)
                    if not last_epoch and run.dist.agree(budget.out_of_time()):
                        # It spent what the final validation was held back for: it is the final one (another
                        # epoch would take a step past the budget and validate again).
                        last_epoch = out_of_time = True
                elif validations.due(state.epoch):
                    log.info("epoch %d: validation skipped, the final one must fit in trainer.max_time", state.epoch)
                writer.flush()  # events up to this step are on disk before the checkpoint that resumes after them
                reason = stop.after_epoch(state, out_of_time)
                interrupt = stop.interrupt_after_epoch(state)
                # The run's last last.pt is written synchronously; the others follow trainer.save_every. The
                # reserve holds back what a synchronous write costs (not a skipped or background save's return).
                saved = checkpoints.save_last(final=reason is not None or interrupt or last_epoch)
                budget.record_checkpoint(checkpoints.write_s)
                clock.epoch_done(state.epoch, epochs)
                if reason is not None:
                    stop_reason = reason
                    break
                if interrupt:
                    raise stop.interrupted(checkpoints.last, state.step, saved)
        checkpoints.wait()  # tuning reads best.pt and writes its parameters into it and last.pt
        last_metrics.update(tune_after_training(run, checkpoints.folder))
        return finish_run(run, run_dir, writer, last_metrics, train_loss, stop_reason, stop.elapsed, checkpoints)
    finally:
        checkpoints.wait()  # a background write in flight lands, also on errors
        writer.close()  # also on errors: the events logged so far reach the disk
        for loader in (run.train_loader, run.val_loader):  # their workers ignore SIGTERM: stopped here, not at exit
            stop_workers(loader)


def finish_run(
    run: Run, run_dir: Path, writer: Any, last: dict[str, float], train_loss: float, stop_reason: str,
    elapsed: float, checkpoints: Checkpointer,
) -> dict[str, float]:  # fmt: skip
    """The final metrics: logged as TensorBoard hparams, written to ``metrics.json`` (main rank), returned."""
    cfg, state = run.cfg, run.state
    metrics = {
        **last,
        "train/loss": train_loss,
        f"best/{cfg.monitor}": state.best if state.best is not None else float("nan"),
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "steps": state.step,
        "time_s": elapsed,
        "validation_s": state.validation_total_s,
    }
    hparam_metrics = {f"hparam/{k}": v for k, v in metrics.items() if "/" in k}
    writer.add_hparams(hparams(cfg, run.runtime.precision), hparam_metrics, run_name=".")
    if run.dist.is_main:
        write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n", root=run_dir)
    log.info(
        "Stopped by %s after %d epochs (%.1f s). Best %s = %.4f at epoch %d. Checkpoints in %s",
        stop_reason, state.epoch, elapsed, cfg.monitor, metrics[f"best/{cfg.monitor}"], state.best_epoch,
        checkpoints.folder,
    )  # fmt: skip
    return metrics


def already_complete(run: Run, run_dir: Path) -> dict[str, float]:
    """A resume of a run that has done its ``trainer.max_epochs``: nothing trains, nothing is overwritten.

    Returns the run's ``metrics.json`` (from ``run_dir`` or the checkpoint's run folder; copied into
    ``run_dir`` when only the latter has it), or, without one, the best value the checkpoint holds.
    """
    cfg, state = run.cfg, run.state
    log.info(
        "Nothing to train: %s has done %d epochs and trainer.max_epochs=%d (raise it to train on); "
        "the run's files are kept as they are",
        cfg.ckpt, state.epoch, cfg.trainer.max_epochs,
    )  # fmt: skip
    target = run_dir / "metrics.json"
    origin = Path(cfg.ckpt).expanduser().resolve().parent.parent / "metrics.json"
    for source in (target, origin):
        if source.is_file():
            metrics = json.loads(source.read_text())
            if source != target and run.dist.is_main:
                write_atomic(target, source.read_text(), root=run_dir)
            return metrics
    best = state.best if state.best is not None else math.nan
    return {f"best/{cfg.monitor}": best, "best_epoch": state.best_epoch, "epochs": state.epoch, "steps": state.step}


def log_start(run: Run) -> None:
    log.info(
        "Training %s on %s (%d train / %s val images), %d steps per epoch, device %s, precision %s",
        run.cfg.model._target_.rsplit(".", 1)[-1],
        type(run.data).__name__,
        len(run.train_loader.dataset),
        validated(run),
        run.steps_per_epoch,
        run.runtime.device,
        run.runtime.precision,
    )


def validated(run: Run) -> str:
    """``16`` or ``5 of 159 (trainer.val_subset, a fixed sample)``: the validation images each validation scores."""
    size, subset = len(run.val_loader.dataset), run.cfg.trainer.get("val_subset")
    return str(size) if subset is None or subset >= size else f"{subset} of {size} (trainer.val_subset, a fixed sample)"


def show_progress(setting: str) -> bool:
    if setting not in ("auto", "always", "never"):
        raise ConfigError(f"trainer.progress={setting!r} must be auto, always or never.")
    return setting == "always" or (setting == "auto" and sys.stderr.isatty())


def validate_config(cfg: DictConfig) -> None:
    """Catch config values that cannot work before any data is read or model built."""
    t = cfg.trainer
    check_numbers(cfg)
    if t.max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={t.max_epochs} must be at least 1.")
    if t.max_time is not None and t.max_time <= 0:
        raise ConfigError(f"trainer.max_time={t.max_time} must be a positive number of seconds (or null).")
    if t.val_every < 1:
        raise ConfigError(f"trainer.val_every={t.val_every} must be at least 1.")
    subset, share = t.get("val_subset"), t.get("val_share")
    if subset is not None and subset < 1:
        raise ConfigError(f"trainer.val_subset={subset} must be a number of validation images (at least 1), or null.")
    if share is not None and not 0 < share < 1:
        raise ConfigError(f"trainer.val_share={share} must be a share of the training time in (0, 1), or null.")
    patience = t.get("early_stopping_patience")
    if patience is not None and patience < 1:
        raise ConfigError(
            f"trainer.early_stopping_patience={patience} must be at least 1 (validations without improvement "
            "before stopping), or null to never stop early."
        )
    SaveEvery.parse(t.get("save_every", 1))
    if t.get("compile_mode", "default") not in COMPILE_MODES:
        modes = ", ".join(COMPILE_MODES)
        raise ConfigError(f"trainer.compile_mode={t.compile_mode!r} is not known; choose {modes}.")
    if t.log_every < 1:
        raise ConfigError(f"trainer.log_every={t.log_every} must be at least 1.")
    batch_size = cfg.data.get("batch_size", 1)
    if batch_size is None or batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size} must be a positive integer.")
