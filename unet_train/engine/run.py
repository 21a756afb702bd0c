"""The objects of one training run, built from the config in one place, and their resume from a checkpoint."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from unet_train.build import (
    build_data,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    resolve_data_config,
)
from unet_train.data.sampling import GLOBAL_STREAM, epoch_seed, set_loader_epoch
from unet_train.engine import distributed, workers
from unet_train.engine.budget import TimeBudget
from unet_train.engine.checkpoint import (
    IMPLEMENTATION_FLAGS,
    check_resumable,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
)
from unet_train.engine.evaluate import LOSS_INPUTS, ForwardCache
from unet_train.engine.resume import restore_rng, resume_plan, stored_setting
from unet_train.engine.runtime import Runtime, make_runtime, seed_everything, to_channels_last
from unet_train.engine.schedulers import continue_schedule
from unet_train.engine.signals import ignore_stop_signals
from unet_train.engine.state import TrainState
from unet_train.engine.trial import trial_step, trial_steps, tune_training
from unet_train.engine.validation import check_monitor, monitor_mode, validation_sampler
from unet_train.errors import CheckpointError, ConfigError

# TrainState lives in engine/state.py, the trial steps in engine/trial.py; both stay importable from here.
__all__ = [
    "COMPILE_MODES", "Run", "TrainState", "apply_optimizer_overrides", "build_run", "replan_schedule", "resume",
    "trial_step", "trial_steps", "tune_training",
]  # fmt: skip

log = logging.getLogger(__name__)

# trainer.compile_mode: torch.compile's modes ("reduce-overhead" captures CUDA graphs: fewer launches per step).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass
class Run:
    """Everything a run trains with. ``model`` is the plain module (checkpoints, validation, clipping);
    ``train_model`` is what the step calls (wrapped by DDP and/or ``torch.compile``)."""

    cfg: DictConfig
    dist: distributed.Distributed
    runtime: Runtime
    data: Any
    criterion: nn.Module
    train_loader: Any
    val_loader: Any
    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    state: TrainState
    mode: str  # min or max: how the monitored value improves
    resolved_config: Any  # the config as plain values, for checkpoints
    # Steps per epoch the learning-rate schedule plans with: this run's, or a resumed run's original
    # one when it resumes on another number of processes (engine/resume.py).
    schedule_steps_per_epoch: int = 0
    # The run's clock (training time over all its segments), and trainer.max_time's schedule and stop.
    budget: TimeBudget = field(default_factory=lambda: TimeBudget(None))
    # Validation's forward pass within the memory budget, measured at the first validation and reused after.
    val_forwards: ForwardCache = field(default_factory=ForwardCache)

    def schedule_progress(self) -> Any:
        """The time-based schedule's progress function when ``trainer.max_time`` is set, else None (step-based)."""
        return self.budget.schedule_progress if self.budget.max_time is not None else None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def start_epoch(self, epoch: int) -> None:
        """Seed and position the loader so epoch ``epoch`` draws what it drew in any earlier run of this seed."""
        # Each epoch's data order, augmentation and dropout come from (seed, epoch) alone, so a resumed
        # run repeats them exactly; part-way through an epoch the restored RNG state holds.
        if self.state.batch == 0:
            seed_everything(epoch_seed(self.cfg.seed + self.dist.rank, epoch, GLOBAL_STREAM))
        set_loader_epoch(self.train_loader, epoch, self.state.batch)
        self.train_model.train()

    def inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """A loader batch on the device: images, masks and the loss's extra per-pixel inputs (``weight``)."""
        images = self.runtime.to_device(batch["image"], image=True)
        masks = self.runtime.to_device(batch["mask"])
        if self.data.device_augment is not None:  # data.device_augment: batched augmentation on the device
            images, masks = self.data.device_augment(images, masks)
            images = self.runtime.to_device(images, image=True)  # back to channels-last when asked
        extra = {k: self.runtime.to_device(batch[k]) for k in LOSS_INPUTS if k in batch}
        return images, masks, extra


def build_run(cfg: DictConfig) -> Run:
    """Build the run of ``cfg``: process group, device, data, model, optimizer, schedule; resumed if ``ckpt`` is set."""
    tcfg = cfg.trainer
    dist = distributed.setup(tcfg.strategy, tcfg.device)  # one process unless trainer=ddp under torchrun
    runtime = make_runtime(dist.device, tcfg.precision, tcfg.channels_last, tcfg.cudnn_benchmark, tcfg.deterministic)
    # Each rank draws its own augmentations; DDP copies rank 0's initial weights to the others.
    seed_everything(cfg.seed + dist.rank)
    mode = monitor_mode(cfg.monitor, cfg.get("monitor_mode", "auto"))

    data = build_data(cfg.data)
    resolve_data_config(cfg, data)  # data.in_channels/num_classes=auto and dataset statistics, before the model
    check_monitor(cfg.monitor, data.num_classes, data.instance_target is not None, getattr(data, "spatial_dims", 2))
    pin = runtime.device.type == "cuda"
    train_sampler = dist.train_sampler(len(data.dataset("train")), data.samples_per_epoch, cfg.seed)
    val_size = len(data.dataset("val"))
    val_sampler = validation_sampler(dist, val_size, tcfg.get("val_subset"))  # trainer.val_subset: a fixed sample
    criterion = build_loss(cfg)
    model = build_model(cfg.model).to(runtime.device)
    checkpoint = None
    if cfg.get("ckpt"):
        checkpoint = load_checkpoint(cfg.ckpt, map_location=runtime.device, trust=cfg.get("trust_config", False))
        check_resumable(checkpoint, cfg.ckpt)
    resumed = stored_setting(checkpoint) if checkpoint is not None else None
    runtime, step_s = tune_training(cfg, runtime, model, criterion, data, dist, resumed)
    weight_maps = _worker_weight_maps(criterion, data)  # the loss's weight maps, made with each item
    if getattr(data, "workers_auto", False):  # data.num_workers=auto: from a batch's cost against a step's
        measure = functools.partial(workers.measure_loading, cfg, data, model, criterion, runtime, step_s, weight_maps)
        data.num_workers = workers.auto_workers(runtime.device, dist.world_size, measure).workers
    # Without DDP the loader makes its own EpochSampler from the seed (exact, restartable epochs).
    train_loader = data.dataloader(
        "train",
        sampler=train_sampler,
        pin_memory=pin,
        seed=cfg.seed,
        worker_init_fn=ignore_stop_signals,
        sample_weight=weight_maps,
    )
    val_loader = data.dataloader("val", sampler=val_sampler, pin_memory=pin, worker_init_fn=ignore_stop_signals)
    if runtime.channels_last:
        model = to_channels_last(model)
    model = dist.prepare_model(model, tcfg.sync_batchnorm)
    optimizer = build_optimizer(cfg, model, fused=True)
    if len(train_loader) == 0:
        share = f" per process (the split is shared by {dist.world_size})" if dist.world_size > 1 else ""
        raise ConfigError(f"The training split has fewer images{share} than data.batch_size={cfg.data.batch_size}.")
    planned_steps = len(train_loader) * tcfg.max_epochs
    budget = TimeBudget(tcfg.max_time)
    sections = getattr(data, "from_sections", False)  # 2D and 2.5D crops of volumes: (1, y, x)
    patch = getattr(data, "patch", None) if getattr(data, "spatial_dims", 2) == 3 or sections else None  # crop sides
    side = int(cfg.data.get("patch_size", 256)) if patch is None else 0
    budget.pixels_per_step = int(cfg.data.batch_size) * (side**2 if patch is None else math.prod(patch))
    # The validation this rank does: its shard of the split or of trainer.val_subset, whose cost the reserve holds back.
    shard = list(val_sampler) if val_sampler is not None else range(val_size)
    sizes: list[Any] = getattr(data.dataset("val"), "item_pixels", lambda: data.split("val").images)()  # 2.5D: ints
    budget.val_pixels = sum(s if isinstance(s, int) else getattr(s, "voxels", 0) or int(s.shape[0]) * int(s.shape[1])
                            for s in (sizes[i] for i in shard))  # fmt: skip
    progress = budget.schedule_progress if tcfg.max_time is not None else None
    scheduler = build_scheduler(cfg, optimizer, total_steps=planned_steps, progress=progress)
    run = Run(
        cfg=cfg,
        dist=dist,
        runtime=runtime,
        data=data,
        criterion=criterion,
        train_loader=train_loader,
        val_loader=val_loader,
        model=model,
        train_model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=runtime.grad_scaler(),
        state=TrainState(planned_steps=planned_steps),
        mode=mode,
        resolved_config=OmegaConf.to_container(cfg, resolve=True),
        schedule_steps_per_epoch=len(train_loader),
        budget=budget,
    )
    if checkpoint is not None:
        resume(run, cfg.ckpt, checkpoint)
    # DDP and torch.compile wrap the module; checkpoints always store the unwrapped one.
    wrapped = dist.wrap(model)
    compile_mode = tcfg.get("compile_mode", "default")
    run.train_model = cast(nn.Module, torch.compile(wrapped, mode=compile_mode)) if tcfg.compile else wrapped
    return run


def _worker_weight_maps(criterion: nn.Module, data: Any) -> Any:
    """The per-pixel weight-map function the loader's workers should apply, or None."""
    # A loss with per-pixel weight maps (loss=weighted_bce) has them computed by the loader's workers
    # from each augmented mask; augmentation on the device changes masks after the workers, so then
    # the loss computes them itself.
    sample_weight = getattr(criterion, "sample_weight", None)
    if sample_weight is not None and data.device_augment is not None:
        log.warning(
            "%s computes its weight maps in the training process after data.device_augment, on the CPU; "
            "with a data config that augments in the workers (data=isbi) the workers compute them in parallel.",
            type(criterion).__name__,
        )
        return None
    return sample_weight


def resume(run: Run, path: str, checkpoint: dict[str, Any] | None = None) -> None:
    """Load weights, optimizer, schedule, scaler, progress and RNG state of ``path`` into ``run`` (``checkpoint``:
    the file as :func:`load_checkpoint` read and :func:`check_resumable` checked it, where it was read already)."""
    cfg = run.cfg
    if checkpoint is None:
        checkpoint = load_checkpoint(path, map_location=run.runtime.device, trust=cfg.get("trust_config", False))
        check_resumable(checkpoint, path)
    load_model_state(run.model, checkpoint["model"], path)
    state = run.state = TrainState(**checkpoint["state"])
    # Another number of processes than the checkpoint's: the schedule keeps the checkpoint's plan.
    run.schedule_steps_per_epoch, state.batch = resume_plan(
        checkpoint, run.dist, run.steps_per_epoch, state.step, state.epoch, state.batch, cfg.trainer.max_epochs
    )
    if run.schedule_steps_per_epoch != run.steps_per_epoch:
        total = run.schedule_steps_per_epoch * cfg.trainer.max_epochs
        run.scheduler = build_scheduler(cfg, run.optimizer, total_steps=total, progress=run.schedule_progress())
    load_optimizer_state(run.optimizer, checkpoint["optimizer"])
    try:  # their contents are torch's own formats: a wrong entry fails inside torch
        run.scheduler.load_state_dict(checkpoint["scheduler"])
        run.scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a usable unet-train checkpoint: its scheduler or scaler: {exc}") from None
    run.budget.restore(state)  # the run's clock, measured costs and time-based schedule go on from the checkpoint
    if run.budget.max_time and checkpoint["config"]["trainer"].get("max_time") is None and state.step:
        # A run planned in steps, resumed with a budget: the time-based schedule goes on from the share of the
        # steps done (a finished run stays at its floor) instead of restarting at the full rate.
        planned = state.planned_steps or run.schedule_steps_per_epoch * checkpoint["config"]["trainer"]["max_epochs"]
        run.budget.progress_before = max(run.budget.progress_before or 0.0, min(1.0, state.step / max(1, planned)))
    restore_rng(checkpoint, run.dist, cfg.seed, state.step)  # each rank its own saved state
    replan_schedule(run, checkpoint)
    apply_optimizer_overrides(run, checkpoint.get("config", {}))
    previous = checkpoint.get("monitor")
    if previous != cfg.monitor:
        log.info(
            "monitor=%s differs from the checkpoint's monitor=%s: the best value starts afresh "
            "(best.pt is replaced at the next validation)",
            cfg.monitor, previous,
        )  # fmt: skip
        state.best, state.best_epoch, state.stale_validations = None, 0, 0
    within = f", batch {state.batch} of the next epoch" if state.batch else ""
    real = Path(path).expanduser().resolve()  # the file itself, not a link to it
    log.info("Resumed from %s after epoch %d (step %d%s)", real, state.epoch, state.step, within)


def replan_schedule(run: Run, checkpoint: dict[str, Any]) -> None:
    """A resume with another ``trainer.max_epochs``: stretch the rest of the schedule, so the rate never jumps.

    The plan is counted in the schedule's own steps per epoch (``run.schedule_steps_per_epoch``), which
    a resume on another number of processes keeps, so only a change of ``max_epochs`` re-plans. The
    re-plans of earlier resumes (``state.replans``) are applied again first: a stretched run resumed
    again goes on along its stretched schedule.
    """
    state, per_epoch = run.state, run.schedule_steps_per_epoch
    planned_now = per_epoch * run.cfg.trainer.max_epochs
    # Checkpoints from before planned_steps was recorded: the plan their own max_epochs implied.
    planned_before = state.planned_steps or per_epoch * checkpoint["config"]["trainer"]["max_epochs"]
    if planned_before != planned_now:
        state.replans = [*state.replans, [state.step, planned_before, planned_now]]
        log.info(
            "The learning-rate schedule was planned over %d steps, now %d: its remaining part is stretched "
            "over the remaining steps from step %d (no jump in the learning rate)",
            planned_before, planned_now, state.step,
        )  # fmt: skip
    # With trainer.max_time the schedule runs over the budget, not the steps: the re-plans are only recorded,
    # for a later resume without a budget.
    if state.replans and run.schedule_progress() is None:
        # The first plan's factors, built on a stand-in optimizer (building a schedule sets its learning
        # rates), then each re-plan in turn.
        groups = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in run.optimizer.param_groups]
        plan = build_scheduler(run.cfg, torch.optim.SGD(groups, lr=1.0), total_steps=state.replans[0][1])
        for done, before, after in state.replans:
            continue_schedule(plan, plan.lr_lambdas, done, before, after)
        if isinstance(run.scheduler, LambdaLR):  # schedules that are not step-indexed factors are left alone
            run.scheduler.lr_lambdas = plan.lr_lambdas
    state.planned_steps = planned_now


def apply_optimizer_overrides(run: Run, stored: dict[str, Any]) -> None:
    """Optimizer settings changed on a resume (``optim.lr=0.5``) replace the restored ones; the log says which.

    ``load_state_dict`` brings back the checkpoint's hyperparameters and the schedule's base rates, so an
    override would otherwise be recorded but never used. A new ``optim.lr`` becomes every group's base
    rate, scaled by the schedule's factor at this step; ``weight_decay`` goes to the decayed group only
    (norms and biases keep none). Schedule settings (``sched.*``) need nothing here: the schedule's
    factors are built from this run's config and take effect at the next step.
    """
    old = stored.get("optim") or {}
    new = cast(dict, OmegaConf.to_container(run.cfg.optim, resolve=True))
    skip = {"_target_", "_partial_", *IMPLEMENTATION_FLAGS}  # how the optimizer runs: this run decides anyway
    changed = {key: value for key, value in new.items() if key not in skip and old.get(key) != value}
    if not changed:
        return
    groups = run.optimizer.param_groups
    unknown = sorted(key for key in changed if key not in groups[0])
    if unknown:
        raise ConfigError(
            f"optim.{unknown[0]} changed on a resume, but the restored {type(run.optimizer).__name__} has no such "
            "setting to change; drop the override, or start a new run."
        )
    for key, value in changed.items():
        for index, group in enumerate(groups):
            if key == "weight_decay" and index > 0:
                continue  # the no-decay group (norms, biases) of build_optimizer
            group[key] = tuple(value) if isinstance(value, list) else value
    if "lr" in changed:
        scheduler = run.scheduler
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [changed["lr"]] * len(groups)
        for index, group in enumerate(groups):
            group["initial_lr"] = changed["lr"]
            # The rate at this step is the new base rate times the schedule's factor now.
            factor = scheduler.lr_lambdas[index](scheduler.last_epoch) if isinstance(scheduler, LambdaLR) else 1.0
            group["lr"] = changed["lr"] * factor
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [group["lr"] for group in groups]
    log.info(
        "Applied to the restored optimizer: %s (the checkpoint had %s)",
        ", ".join(f"optim.{key}={value}" for key, value in changed.items()),
        ", ".join(f"{key}={old.get(key)}" for key in changed),
    )
