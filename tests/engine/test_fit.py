"""The training loop end to end, in process: files written, metrics logged, loss falling on real data."""

from __future__ import annotations

import json
import multiprocessing

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit, monitor_mode
from unet_train.errors import ConfigError

from ..conftest import TINY, compose_config


def scalars(folder) -> dict[str, list[float]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_two_epochs_write_checkpoints_events_and_metrics(tmp_path):
    cfg = compose_config(TINY)
    metrics = fit(cfg, tmp_path)

    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(tmp_path / "checkpoints" / name)
        assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "state", "rng", "config", "monitor"}
        assert ckpt["config"]["model"]["base_channels"] == 4
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]["epoch"] == 2
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary files left

    logged = scalars(tmp_path / "tensorboard")
    assert len(logged["train/loss"]) == 4  # 8 images / batch 4 = 2 steps per epoch, log_every=1
    assert len(logged["val/dice"]) == 2 and len(logged["val/loss"]) == 2
    assert {"val/iou", "val/pixel_error", "train/lr"} <= set(logged)
    assert len(logged["train/images_per_s"]) == 2 and min(logged["train/images_per_s"]) > 0  # one per epoch

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["val/dice"] == pytest.approx(metrics["val/dice"])
    assert written["best/val/dice"] == pytest.approx(max(logged["val/dice"]), rel=1e-6)  # TB stores float32
    assert written["epochs"] == 2 and written["steps"] == 4


def test_max_time_stops_early_and_still_validates(tmp_path):
    cfg = compose_config([*TINY, "trainer.max_epochs=1000", "trainer.max_time=0.5"])
    metrics = fit(cfg, tmp_path)
    assert metrics["epochs"] < 1000
    assert "val/dice" in metrics and (tmp_path / "checkpoints" / "last.pt").is_file()
    # The seconds all validations took, part of the run's time (the budget's share spent validating).
    assert 0 < metrics["validation_s"] < metrics["time_s"]
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["state"]["validation_total_s"] > 0


def test_deep_supervision_and_multiclass_train(tmp_path):
    cfg = compose_config([*TINY, "model.deep_supervision=true", "model.skip=attention", "loss=dice"])
    metrics = fit(cfg, tmp_path)
    assert 0.0 <= metrics["val/dice"] <= 1.0


def test_bad_trainer_values_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="trainer.max_epochs=0 must be at least 1"):
        fit(compose_config([*TINY, "trainer.max_epochs=0"]), tmp_path)
    with pytest.raises(ConfigError, match="trainer.precision='8' is not known"):
        fit(compose_config([*TINY, "trainer.precision=8"]), tmp_path)
    with pytest.raises(ConfigError, match="data.batch_size=0 must be a positive integer"):
        fit(compose_config([*TINY, "data.batch_size=0"]), tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            fit(compose_config([*TINY, "trainer.device=cuda"]), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_monitor_mode():
    assert monitor_mode("val/loss") == "min"
    assert monitor_mode("val/pixel_error") == "min"
    assert monitor_mode("val/dice") == "max"
    assert monitor_mode("val/vinfo") == "max" and monitor_mode("val/vrand") == "max"
    assert monitor_mode("val/hd95") == "min"
    assert monitor_mode("val/dice", "min") == "min"


@pytest.mark.slow
def test_short_isbi_run_lowers_validation_loss(isbi_root, tmp_path):
    """A small model on the real ISBI slices: validation loss after 4 epochs is below the first epoch's."""
    cfg = compose_config(
        [
            "data=isbi",
            f"data.root={isbi_root}",
            "trainer=cpu",
            "trainer.max_epochs=4",
            "trainer.progress=never",
            "model.base_channels=8",
            "model.depth=3",
            "data.patch_size=128",
            "data.samples_per_epoch=32",
            "data.batch_size=8",
            "data.num_workers=0",
            "data.val_slices=[25,27]",
            "optim.lr=3e-3",
        ]
    )
    fit(cfg, tmp_path)
    losses = scalars(tmp_path / "tensorboard")["val/loss"]
    assert len(losses) == 4
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("optim", ["adam", "adamw", "sgd"])
def test_fused_optimizer_skips_a_step_on_a_device_flag(optim):
    """fit() on one GPU builds the optimizer fused and skips a non-finite step through its ``found_inf``
    flag, without reading the flag on the host. The same kernels exist on the CPU, so the skip is checked here:
    NaN gradients with the flag set leave the weights and the optimizer state as they were."""
    from unet_train.build import build_model, build_optimizer

    cfg = compose_config([*TINY, f"optim={optim}"])
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg, model, fused=True)
    assert optimizer.defaults["fused"] is True and optimizer._step_supports_amp_scaling
    explicit = compose_config([*TINY, f"optim={optim}", "optim.fused=false"])
    assert not build_optimizer(explicit, model, fused=True).defaults["fused"]  # the config's own choice wins
    assert not build_optimizer(cfg, model).defaults["fused"]

    def step(found_inf: float, grad: float) -> None:
        for p in model.parameters():
            p.grad = torch.full_like(p, grad)
        optimizer.found_inf = torch.tensor(found_inf)
        optimizer.step()

    step(0.0, 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = {
        id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in optimizer.state.items()
    }
    step(1.0, float("nan"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for p, s in optimizer.state.items():
        assert all(torch.equal(state_before[id(p)][k], v) for k, v in s.items() if torch.is_tensor(v))
    step(0.0, 1.0)  # a finite step with the flag clear does update
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_weight_maps_come_from_the_loader_workers(tmp_path):
    """loss=weighted_bce: the training loader's items carry the loss's weight map of their augmented mask."""
    from unet_train.build import build_data, build_loss

    cfg = compose_config([*TINY, "loss=weighted_bce", "data.num_workers=1"])
    loss = build_loss(cfg)
    loader = build_data(cfg.data).dataloader("train", sample_weight=loss.sample_weight)
    batch = next(iter(loader))
    assert batch["weight"].shape == batch["mask"].shape and batch["weight"].dtype == torch.float32
    for mask, weight in zip(batch["mask"], batch["weight"]):
        assert torch.equal(weight, torch.from_numpy(loss.sample_weight(mask.numpy())))
    metrics = fit(cfg, tmp_path)
    assert metrics["steps"] == 4 and 0.0 <= metrics["val/dice"] <= 1.0


def test_the_loader_workers_are_gone_when_fit_returns(tmp_path):
    """The workers ignore SIGTERM (engine/signals.py), so neither torch's fallback nor the interpreter's exit can
    end them: fit stops them itself. Left to the cycle collector, they outlived the run, and ``unet-train`` waited
    for them forever after its last log line (data.num_workers=auto takes workers on every GPU run)."""
    before = set(multiprocessing.active_children())
    fit(compose_config([*TINY, "data.num_workers=1", "trainer.max_epochs=1"]), tmp_path)
    assert set(multiprocessing.active_children()) - before == set()


def test_optimizer_state_resumes_across_foreach_and_fused():
    """A checkpoint from a foreach optimizer (CPU run) resumes into a fused one (GPU run) and back; the
    saved ``fused: False`` must not switch the new optimizer back, or its device-side skip would fail."""
    from unet_train.build import build_model, build_optimizer
    from unet_train.engine.checkpoint import load_optimizer_state

    cfg = compose_config(TINY)
    model = build_model(cfg.model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    plain = build_optimizer(cfg, model)
    plain.step()
    saved = plain.state_dict()

    fused = build_optimizer(cfg, model, fused=True)
    load_optimizer_state(fused, saved)
    assert all(group["fused"] for group in fused.param_groups)
    for p in model.parameters():
        assert torch.equal(fused.state[p]["exp_avg"], plain.state[p]["exp_avg"])
        assert fused.state[p]["step"].dtype == torch.float32 and float(fused.state[p]["step"]) == 1.0
    before = [p.detach().clone() for p in model.parameters()]
    fused.found_inf = torch.tensor(1.0)
    fused.step()  # skipped on the flag
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))

    back = build_optimizer(cfg, model)
    load_optimizer_state(back, fused.state_dict())
    assert not any(group["fused"] for group in back.param_groups)
    back.step()
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
