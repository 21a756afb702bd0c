"""unet-plan times the step the run will take: the layout measured on this CPU, shared with the run's cache."""

from __future__ import annotations

import json

import torch

from unet_train.engine import autotune
from unet_train.plan.measure import WIDTHS, measure_device


def test_each_width_is_timed_in_its_faster_measured_layout_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # the suite's other worker may share the CPU while this times for real: cache whatever share it gets
    monkeypatch.setattr(autotune, "SHARED_CPU", 0.0)
    facts = measure_device(torch.device("cpu"), in_channels=1, num_classes=2, patch=32, depth=2, batch=2)
    assert set(facts.step_seconds) == set(WIDTHS["cpu"])
    entries = json.loads((tmp_path / "unet-train" / "tuning.json").read_text())["entries"].values()
    assert len(entries) == len(WIDTHS["cpu"])
    assert all(e["about"]["phase"] == "training" and e["about"]["shape"] == [2, 1, 32, 32] for e in entries)
    # Each width's time is its faster layout's median, as the run will train in that layout.
    assert sorted(facts.step_seconds.values()) == sorted(min(e["seconds"].values()) for e in entries)
    again = measure_device(torch.device("cpu"), in_channels=1, num_classes=2, patch=32, depth=2, batch=2)
    assert again.step_seconds == facts.step_seconds  # measured once: the second plan reads the cache


def test_a_fixed_layout_is_timed_without_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fixed = {"channels_last": False, "precision": "32"}
    facts = measure_device(torch.device("cpu"), 1, 2, patch=32, depth=2, batch=2, steps=1, **fixed)
    assert set(facts.step_seconds) == set(WIDTHS["cpu"]) and min(facts.step_seconds.values()) > 0
    assert not (tmp_path / "unet-train").exists()


def test_a_whole_validation_image_is_timed_at_the_width_the_plan_chooses(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    from unet_train.engine import evaluate as evaluate_module

    real = evaluate_module.evaluate

    def spy(model, loader, runtime, num_classes, loss_fn=None, on_batch=None):
        (batch,) = loader
        calls.append(tuple(batch["image"].shape))
        return real(model, loader, runtime, num_classes, loss_fn=loss_fn, on_batch=on_batch)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    facts = measure_device(torch.device("cpu"), 1, 2, patch=32, depth=2, batch=2, channels_last=False, steps=1,
                           budget_s=1e6, val_size=(40, 56))  # fmt: skip
    # A huge budget: the widest width is the plan's, and only it is validated (a warm-up call and the timed ones).
    assert list(facts.val_seconds) == [max(WIDTHS["cpu"])] and facts.val_seconds[32] > 0
    assert facts.val_pixels == 40 * 56
    assert calls and set(calls) == {(1, 1, 40, 56)}


def test_the_run_config_decides_the_optimizer_and_precision_timed(tmp_path, monkeypatch):
    from tests.conftest import compose_config
    from unet_train.engine import trial as trial_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    seen = []
    real = trial_module.trial_steps

    def spy(cfg, model, criterion, batch):
        seen.append((cfg.optim._target_, cfg.get("trainer", {}).get("grad_clip", "default")))
        return real(cfg, model, criterion, batch)

    monkeypatch.setattr(trial_module, "trial_steps", spy)
    cfg = compose_config(["trainer=cpu", "optim=sgd", "trainer.grad_clip=null", "trainer.channels_last=false"])
    measure_device(torch.device("cpu"), 1, 2, patch=32, depth=2, batch=2, steps=1, run_cfg=cfg)
    assert seen and set(seen) == {("torch.optim.SGD", None)}
