"""unet-plan times the step the run will take: the layout measured on this CPU, shared with the run's cache."""

from __future__ import annotations

import json

import torch

from unet_train.plan.measure import WIDTHS, measure_device


def test_each_width_is_timed_in_its_faster_measured_layout_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
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
    facts = measure_device(torch.device("cpu"), 1, 2, patch=32, depth=2, batch=2, channels_last=False, steps=1)
    assert set(facts.step_seconds) == set(WIDTHS["cpu"]) and min(facts.step_seconds.values()) > 0
    assert not (tmp_path / "unet-train").exists()
