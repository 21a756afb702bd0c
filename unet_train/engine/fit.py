"""The training loop: ``fit(cfg, run_dir)`` trains, validates, checkpoints and logs one run."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from unet_train.build import build_data, build_loss, build_model, build_optimizer, build_scheduler
from unet_train.engine.checkpoint import FORMAT, load_checkpoint, save_atomic, unwrap
from unet_train.engine.evaluate import evaluate
from unet_train.engine.runtime import make_runtime, rng_state, seed_everything, set_rng_state
from unet_train.engine.tensorboard import hparams, panel
from unet_train.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

MINIMIZED = ("loss", "error", "vinfo", "hd95")


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides the weights."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best: float | None = None  # best monitored value so far
    best_epoch: int = 0
    stale_validations: int = 0  # validations since the monitored value last improved


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
    runtime = make_runtime(tcfg.device, tcfg.precision, tcfg.channels_last, tcfg.cudnn_benchmark, tcfg.deterministic)
    seed_everything(cfg.seed)
    mode = monitor_mode(cfg.monitor, cfg.get("monitor_mode", "auto"))

    data = build_data(cfg.data)
    pin = runtime.device.type == "cuda"
    train_loader = data.dataloader("train", pin_memory=pin)
    val_loader = data.dataloader("val", pin_memory=pin)
    model = build_model(cfg.model).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_loss(cfg)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError(f"The training split has fewer images than data.batch_size={cfg.data.batch_size}.")
    scheduler = build_scheduler(cfg, optimizer, total_steps=steps_per_epoch * tcfg.max_epochs)
    scaler = runtime.grad_scaler()
    state = TrainState()

    if cfg.get("ckpt"):
        checkpoint = load_checkpoint(cfg.ckpt, map_location=runtime.device)
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"{cfg.ckpt} does not fit the model of this config: {str(exc).splitlines()[0]}"
            ) from exc
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = TrainState(**checkpoint["state"])
        set_rng_state(checkpoint["rng"])
        log.info("Resumed from %s after epoch %d (step %d)", cfg.ckpt, state.epoch, state.step)

    # torch.compile wraps the module; checkpoints always store the unwrapped one.
    train_model = torch.compile(model) if tcfg.compile else model
    ckpt_dir = run_dir / "checkpoints"
    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=state.step if state.step else None)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    def save(name: str) -> None:
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

    device_augment = getattr(data, "device_augment", None)
    sync_free = runtime.device.type == "cuda"
    nonfinite_window = torch.zeros((), dtype=torch.int64, device=runtime.device)
    progress = show_progress(tcfg.progress)
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

    with logging_redirect_tqdm():
        epochs = tqdm(
            range(state.epoch, tcfg.max_epochs), desc="epochs", disable=not progress, initial=state.epoch,
            total=tcfg.max_epochs, dynamic_ncols=True,
        )  # fmt: skip
        for epoch in epochs:
            train_model.train()
            loss_sum = torch.zeros((), device=runtime.device)  # summed on device: no per-step sync
            n_in_window = 0
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, dynamic_ncols=True)
            out_of_time = False
            for batch in bar:
                images = runtime.to_device(batch["image"], image=True)
                masks = runtime.to_device(batch["mask"])
                if device_augment is not None:  # data.device_augment: batched augmentation on the device
                    images, masks = device_augment(images, masks)
                    images = runtime.to_device(images, image=True)  # back to channels-last when asked
                with runtime.autocast():
                    outputs = train_model(images)
                loss = criterion(outputs, masks)

                # A non-finite loss would poison the weights: skip the step. Reading the flag on the
                # host is free on CPU, but on CUDA it is a sync point that stalls the launch queue every
                # step; there the flags are summed on the device and read with the loss at log points.
                if sync_free:
                    nonfinite_window += ~torch.isfinite(loss.detach())
                elif not torch.isfinite(loss):
                    nonfinite += 1
                    optimizer.zero_grad(set_to_none=True)
                    log.warning("Non-finite loss at step %d (%d in a row); step skipped", state.step, nonfinite)
                    if nonfinite >= tcfg.max_nonfinite_steps:
                        raise FloatingPointError(
                            f"The loss was NaN/inf for {nonfinite} consecutive steps (last at step {state.step}); "
                            f"training stopped. The last good checkpoint is {ckpt_dir / 'last.pt'}. Lower optim.lr, "
                            "use trainer.precision=32, or check the data for NaNs."
                        )
                    continue
                else:
                    nonfinite = 0

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if tcfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state.step += 1
                loss_sum += loss.detach()
                n_in_window += 1

                if state.step % tcfg.log_every == 0:
                    if sync_free:  # CUDA: the steps since the last read were not skipped, only counted
                        bad = int(nonfinite_window.item())
                        nonfinite_window.zero_()
                        nonfinite = nonfinite + bad if bad else 0
                        if bad:
                            log.warning("Non-finite loss in %d of the last %d steps", bad, n_in_window)
                        if nonfinite >= tcfg.max_nonfinite_steps:
                            raise FloatingPointError(
                                f"The loss was NaN/inf for {nonfinite} steps up to step {state.step}; training "
                                f"stopped. The last good checkpoint is {ckpt_dir / 'last.pt'}. Lower optim.lr, "
                                "use trainer.precision=32, or check the data for NaNs."
                            )
                    train_loss = loss_sum.item() / n_in_window
                    loss_sum.zero_()
                    n_in_window = 0
                    lr = optimizer.param_groups[0]["lr"]
                    writer.add_scalar("train/loss", train_loss, state.step)
                    writer.add_scalar("train/lr", lr, state.step)
                    bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}")
                if tcfg.max_time is not None and time.monotonic() - start >= tcfg.max_time:
                    out_of_time = True
                    break
            if n_in_window:
                train_loss = loss_sum.item() / n_in_window
                writer.add_scalar("train/loss", train_loss, state.step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], state.step)
            state.epoch = epoch + 1

            last_epoch = out_of_time or state.epoch == tcfg.max_epochs
            if state.epoch % tcfg.val_every == 0 or last_epoch:
                # The eager model (same weights): a compiled one would recompile for eval mode and for
                # every new validation image size, which costs more than it saves on a few images.
                last_metrics = validate(cfg, model, val_loader, runtime, criterion, data.num_classes, writer, state)
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
                    "epoch %d  train/loss %.4f  %s",
                    state.epoch,
                    train_loss,
                    "  ".join(f"{k} {v:.4f}" for k, v in last_metrics.items()),
                )
            save("last.pt")
            writer.flush()

            patience = tcfg.early_stopping_patience
            if out_of_time:
                stop_reason = f"max_time ({tcfg.max_time:g} s)"
                break
            if patience is not None and state.stale_validations >= patience:
                stop_reason = f"early stopping ({patience} validations without improvement)"
                break

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
    metrics = {f"val/{k}": v for k, v in result.metrics.items()}
    for key, value in metrics.items():
        writer.add_scalar(key, value, state.step)
    for i, image in enumerate(panels):
        writer.add_image(f"val/panel_{i}", image, state.step)
    return metrics
