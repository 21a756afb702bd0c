"""The training loop: ``fit(cfg, run_dir)`` trains, validates, checkpoints and logs one run."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from unet_train.build import (
    build_data,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    resolve_data_config,
)
from unet_train.data.sampling import GLOBAL_STREAM, epoch_seed, set_loader_epoch
from unet_train.engine import distributed
from unet_train.engine.checkpoint import (
    FORMAT,
    discard_partial_writes,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    save_atomic,
    unwrap,
    weights_finite,
)
from unet_train.engine.evaluate import evaluate
from unet_train.engine.preflight import check_numbers
from unet_train.engine.runtime import make_runtime, rng_state, seed_everything, set_rng_state, to_channels_last
from unet_train.engine.signals import GracefulStop, ignore_stop_signals, interrupted
from unet_train.engine.tensorboard import hparams, panel
from unet_train.errors import ConfigError, TrainingDiverged

log = logging.getLogger(__name__)

# V-Rand and V-Info are F-scores (1.0 = perfect, see metrics/isbi.py), so they are maximised.
MINIMIZED = ("loss", "error", "hd95")


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides the weights."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best: float | None = None  # best monitored value so far
    best_epoch: int = 0
    stale_validations: int = 0  # validations since the monitored value last improved
    batch: int = 0  # batches of epoch ``epoch + 1`` already trained on (> 0 only after a stop signal)


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """``min`` for losses and errors, ``max`` for scores, unless ``monitor_mode`` says otherwise."""
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ConfigError(f"monitor_mode={mode!r} must be auto, min or max.")
    return "min" if any(word in monitor for word in MINIMIZED) else "max"


def improved(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


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
    if t.log_every < 1:
        raise ConfigError(f"trainer.log_every={t.log_every} must be at least 1.")
    batch_size = cfg.data.get("batch_size", 1)
    if batch_size is None or batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size} must be a positive integer.")


def fit(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Train the model of ``cfg`` and write checkpoints, TensorBoard logs and ``metrics.json`` under ``run_dir``.

    Returns the final metrics; ``metrics[cfg.monitor]`` is the best monitored value.
    """
    validate_config(cfg)
    run_dir = Path(run_dir)
    tcfg = cfg.trainer
    dist = distributed.setup(tcfg.strategy, tcfg.device)  # one process unless trainer=ddp under torchrun
    runtime = make_runtime(dist.device, tcfg.precision, tcfg.channels_last, tcfg.cudnn_benchmark, tcfg.deterministic)
    # Each rank draws its own augmentations; DDP copies rank 0's initial weights to the others.
    seed_everything(cfg.seed + dist.rank)
    mode = monitor_mode(cfg.monitor, cfg.get("monitor_mode", "auto"))

    data = build_data(cfg.data)
    resolve_data_config(cfg, data)  # data.in_channels/num_classes=auto and dataset statistics, before the model
    pin = runtime.device.type == "cuda"
    train_sampler = dist.train_sampler(len(data.dataset("train")), data.samples_per_epoch, cfg.seed)
    val_sampler = dist.eval_sampler(len(data.dataset("val")))
    criterion = build_loss(cfg)
    device_augment = data.device_augment
    # A loss with per-pixel weight maps (loss=weighted_bce) has them computed by the loader's workers
    # from each augmented mask; augmentation on the device changes masks after the workers, so then
    # the loss computes them itself.
    sample_weight = getattr(criterion, "sample_weight", None)
    if sample_weight is not None and device_augment is not None:
        log.warning(
            "%s computes its weight maps in the training process after data.device_augment, on the CPU; "
            "with a data config that augments in the workers (data=isbi) the workers compute them in parallel.",
            type(criterion).__name__,
        )
        sample_weight = None
    # Without DDP the loader makes its own EpochSampler from the seed (exact, restartable epochs).
    train_loader = data.dataloader(
        "train",
        sampler=train_sampler,
        pin_memory=pin,
        seed=cfg.seed,
        worker_init_fn=ignore_stop_signals,
        sample_weight=sample_weight,
    )
    val_loader = data.dataloader("val", sampler=val_sampler, pin_memory=pin, worker_init_fn=ignore_stop_signals)
    model = build_model(cfg.model).to(runtime.device)
    if runtime.channels_last:
        model = to_channels_last(model)
    model = dist.prepare_model(model, tcfg.sync_batchnorm)
    optimizer = build_optimizer(cfg, model, fused=True)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        share = f" per process (the split is shared by {dist.world_size})" if dist.world_size > 1 else ""
        raise ConfigError(f"The training split has fewer images{share} than data.batch_size={cfg.data.batch_size}.")
    scheduler = build_scheduler(cfg, optimizer, total_steps=steps_per_epoch * tcfg.max_epochs)
    scaler = runtime.grad_scaler()
    state = TrainState()

    if cfg.get("ckpt"):
        checkpoint = load_checkpoint(cfg.ckpt, map_location=runtime.device)
        load_model_state(model, checkpoint["model"], cfg.ckpt)
        load_optimizer_state(optimizer, checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = TrainState(**checkpoint["state"])
        set_rng_state(checkpoint["rng"])
        if dist.rank:  # the checkpoint holds rank 0's RNG; keep the ranks' augmentations apart
            seed_everything(cfg.seed + dist.rank + state.step)
        within = f", batch {state.batch} of the next epoch" if state.batch else ""
        log.info("Resumed from %s after epoch %d (step %d%s)", cfg.ckpt, state.epoch, state.step, within)

    # DDP and torch.compile wrap the module; checkpoints always store the unwrapped one.
    train_model = cast(nn.Module, torch.compile(dist.wrap(model))) if tcfg.compile else dist.wrap(model)
    # Validation runs the plain module: DDP's forward expects every rank to run the same batches (each
    # rank scores its own shard), and a compiled model would recompile for eval mode and for every new
    # validation image size, which costs more than it saves on a few images.
    eval_model = model
    ckpt_dir = run_dir / "checkpoints"
    for leftover in discard_partial_writes(ckpt_dir) if dist.is_main else []:
        log.warning("Removed %s, a checkpoint write cut short by a kill", leftover.name)
    # Events after the checkpoint's step come from the lost part of a killed run: drop them.
    writer = dist.summary_writer(run_dir / "tensorboard", purge_step=state.step + 1 if state.step else None)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    def save(name: str) -> bool:
        if not dist.is_main:
            return False
        if not weights_finite(model):  # keep the last good file rather than NaN weights
            log.warning("Not writing %s: the weights are no longer finite", name)
            return False
        save_atomic(
            {
                "format": FORMAT,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "state": asdict(state),
                "monitor": cfg.monitor,
                "rng": rng_state(),
                "config": resolved,
            },
            ckpt_dir / name,
        )
        return True

    # On a single CUDA device with a fused optimizer, a non-finite loss is skipped without a host sync:
    # the flag goes to the optimizer as ``found_inf`` (the device-side skip GradScaler uses too), which
    # leaves weights and moments untouched, and the flags are summed on the device and read at log
    # points. Elsewhere the flag is read every step (under DDP it is all-reduced, so all ranks skip).
    sync_free = (
        runtime.device.type == "cuda"
        and not dist.enabled
        and bool(getattr(optimizer, "_step_supports_amp_scaling", False))
    )
    nonfinite_window = torch.zeros((), dtype=torch.int64, device=runtime.device)
    progress = show_progress(tcfg.progress) and dist.is_main
    start = time.monotonic()
    last_metrics: dict[str, float] = {}
    train_loss = float("nan")
    stop_reason = "max_epochs"
    nonfinite = 0
    log.info(
        "Training %s on %s (%d train / %d val images), %d steps per epoch, device %s, precision %s",
        cfg.model._target_.rsplit(".", 1)[-1],
        type(data).__name__,
        len(train_loader.dataset),  # type: ignore[arg-type]
        len(val_loader.dataset),  # type: ignore[arg-type]
        steps_per_epoch,
        runtime.device,
        tcfg.precision,
    )

    with logging_redirect_tqdm(), GracefulStop() as stop:
        epochs = tqdm(
            range(state.epoch, tcfg.max_epochs), desc="epochs", disable=not progress, initial=state.epoch,
            total=tcfg.max_epochs, dynamic_ncols=True,
        )  # fmt: skip
        for epoch in epochs:
            # Each epoch's data order, augmentation and dropout come from (seed, epoch) alone, so a
            # resumed run repeats them exactly; part-way through an epoch the restored RNG state holds.
            if state.batch == 0:
                seed_everything(epoch_seed(cfg.seed + dist.rank, epoch, GLOBAL_STREAM))
            set_loader_epoch(train_loader, epoch, state.batch)
            train_model.train()
            epoch_start, steps_before = time.monotonic(), state.step
            loss_sum = torch.zeros((), device=runtime.device)  # summed on device: no per-step sync
            loss_count = torch.zeros((), device=runtime.device)  # steps with a finite loss in loss_sum
            n_in_window = 0
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, dynamic_ncols=True)
            out_of_time = False
            for batch in bar:
                if stop.requested:  # the batch is not used: a resumed run starts from it
                    writer.close()
                    raise interrupted(stop.signal, ckpt_dir / "last.pt", state.step, save("last.pt"))
                state.batch += 1
                images = runtime.to_device(batch["image"], image=True)
                masks = runtime.to_device(batch["mask"])
                if device_augment is not None:  # data.device_augment: batched augmentation on the device
                    images, masks = device_augment(images, masks)
                    images = runtime.to_device(images, image=True)  # back to channels-last when asked
                with runtime.autocast():
                    outputs = train_model(images)
                if "weight" in batch:
                    loss = criterion(outputs, masks, weight=runtime.to_device(batch["weight"]))
                else:
                    loss = criterion(outputs, masks)

                # A non-finite loss would poison the weights: skip the step. Reading the flag on the
                # host is free on CPU, but on CUDA it is a sync point that stalls the launch queue every
                # step; there the flags are summed on the device and read with the loss at log points.
                if sync_free:
                    bad = ~torch.isfinite(loss.detach())
                    nonfinite_window += bad
                elif not dist.all_finite(loss):  # under DDP: all ranks skip together
                    nonfinite += 1
                    optimizer.zero_grad(set_to_none=True)
                    log.warning("Non-finite loss at step %d (%d in a row); step skipped", state.step, nonfinite)
                    if nonfinite >= tcfg.max_nonfinite_steps:
                        writer.close()
                        kept = ckpt_dir / "last.pt"
                        kept_text = f"the last good checkpoint {kept} is kept" if kept.is_file() else "none was saved"
                        raise TrainingDiverged(
                            f"The loss was NaN/inf for {nonfinite} consecutive steps (last at step {state.step}, "
                            f"epoch {epoch + 1}); training stopped and {kept_text}. Lower optim.lr, use "
                            "trainer.precision=32, or check the data for NaNs."
                        )
                    continue
                else:
                    nonfinite = 0

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if tcfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                if sync_free and not scaler.is_enabled():  # (an enabled scaler sets its own found_inf)
                    optimizer.found_inf = bad.float()  # type: ignore[attr-defined]
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state.step += 1
                if sync_free:
                    loss_sum += torch.where(bad, 0.0, loss.detach())
                    loss_count += ~bad
                else:
                    loss_sum += loss.detach()
                    loss_count += 1
                n_in_window += 1

                if state.step % tcfg.log_every == 0:
                    if sync_free:  # CUDA: the skipped steps since the last read, counted on the device
                        n_bad = int(nonfinite_window.item())
                        nonfinite_window.zero_()
                        nonfinite = nonfinite + n_bad if n_bad else 0
                        if n_bad:
                            log.warning(
                                "Non-finite loss in %d of the last %d steps; those steps skipped", n_bad, n_in_window
                            )
                        if nonfinite >= tcfg.max_nonfinite_steps:
                            raise TrainingDiverged(
                                f"The loss was NaN/inf for {nonfinite} steps up to step {state.step}; training "
                                f"stopped. The last good checkpoint is {ckpt_dir / 'last.pt'}. Lower optim.lr, "
                                "use trainer.precision=32, or check the data for NaNs."
                            )
                    train_loss = (dist.mean(loss_sum) / loss_count).item()  # NaN if every step was skipped
                    loss_sum.zero_()
                    loss_count.zero_()
                    n_in_window = 0
                    lr = optimizer.param_groups[0]["lr"]
                    writer.add_scalar("train/loss", train_loss, state.step)
                    writer.add_scalar("train/lr", lr, state.step)
                    bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}")
                if tcfg.max_time is not None and dist.agree(time.monotonic() - start >= tcfg.max_time):
                    out_of_time = True
                    break
            if n_in_window:
                train_loss = (dist.mean(loss_sum) / loss_count).item()
                writer.add_scalar("train/loss", train_loss, state.step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], state.step)
            # Training images per second of this epoch's loop (all processes), data loading included.
            seen = (state.step - steps_before) * cfg.data.batch_size * dist.world_size
            images_per_s = seen / max(time.monotonic() - epoch_start, 1e-9)
            writer.add_scalar("train/images_per_s", images_per_s, state.step)
            state.epoch, state.batch = epoch + 1, 0

            last_epoch = out_of_time or state.epoch == tcfg.max_epochs
            if state.epoch % tcfg.val_every == 0 or last_epoch:
                dist.sync_buffers(model)
                last_metrics = validate(
                    cfg, eval_model, val_loader, runtime, criterion, data.num_classes, writer, state, dist
                )
                value = last_metrics.get(cfg.monitor)
                if value is None:
                    raise ConfigError(
                        f"monitor={cfg.monitor!r} is not a validation metric; choose one of {', '.join(last_metrics)}."
                    )
                if improved(value, state.best, mode):
                    state.best, state.best_epoch, state.stale_validations = value, state.epoch, 0
                    save("best.pt")
                else:
                    state.stale_validations += 1
                epochs.set_postfix({cfg.monitor: f"{value:.4f}", "best": f"{state.best:.4f}"})
                log.info(
                    "epoch %d  train/loss %.4f  %s  (%.1f images/s)",
                    state.epoch,
                    train_loss,
                    "  ".join(f"{k} {v:.4f}" for k, v in last_metrics.items()),
                    images_per_s,
                )
            writer.flush()  # events up to this step are on disk before the checkpoint that resumes after them
            saved = save("last.pt")

            patience = tcfg.early_stopping_patience
            if out_of_time:
                stop_reason = f"max_time ({tcfg.max_time:g} s)"
                break
            if patience is not None and dist.agree(state.stale_validations >= patience):
                stop_reason = f"early stopping ({patience} validations without improvement)"
                break
            if stop.requested and state.epoch < tcfg.max_epochs:  # after the last epoch, finish normally
                writer.close()
                raise interrupted(stop.signal, ckpt_dir / "last.pt", state.step, saved)

    elapsed = time.monotonic() - start
    metrics = {
        **last_metrics,
        "train/loss": train_loss,
        f"best/{cfg.monitor}": state.best if state.best is not None else float("nan"),
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "steps": state.step,
        "time_s": elapsed,
    }
    writer.add_hparams(hparams(cfg), {f"hparam/{k}": v for k, v in metrics.items() if "/" in k}, run_name=".")
    writer.close()
    if dist.is_main:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "Stopped by %s after %d epochs (%.1f s). Best %s = %.4f at epoch %d. Checkpoints in %s",
        stop_reason, state.epoch, elapsed, cfg.monitor, metrics[f"best/{cfg.monitor}"], state.best_epoch, ckpt_dir,
    )  # fmt: skip
    return metrics


def validate(
    cfg: DictConfig,
    model: torch.nn.Module,
    loader: Any,
    runtime: Any,
    criterion: torch.nn.Module,
    num_classes: int,
    writer: SummaryWriter,
    state: TrainState,
    dist: distributed.Distributed | None = None,
) -> dict[str, float]:
    """Score the validation split; log ``val/*`` scalars and image panels at the current step."""
    panels: list[torch.Tensor] = []
    wanted = cfg.trainer.num_image_panels

    def collect(batch: dict[str, Any], logits: torch.Tensor) -> None:
        for i in range(len(batch["name"])):
            if len(panels) < wanted:
                mask = batch["mask"][i] if "mask" in batch else None
                panels.append(panel(batch["image"][i], mask, logits[i]))

    result = evaluate(model, loader, runtime, num_classes, loss_fn=criterion, on_batch=collect)
    merged = dist.gather_eval(result) if dist is not None else result.metrics  # over all ranks' shards
    metrics = {f"val/{k}": v for k, v in merged.items()}
    for key, value in metrics.items():
        writer.add_scalar(key, value, state.step)
    for i, image in enumerate(panels):
        writer.add_image(f"val/panel_{i}", image, state.step)
    return metrics
