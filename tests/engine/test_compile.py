"""``trainer.compile=true`` really compiles the training model on CPU and trains through it."""

from __future__ import annotations

import pytest
import torch

from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit

from ..conftest import TINY, compose_config


@pytest.mark.slow
def test_compiled_training_runs_and_saves_plain_weights(tmp_path):
    """Inductor compiles the forward and backward once (tens of seconds of CPU time on 2 cores);
    validation uses the eager module, so nothing recompiles for eval mode or other image sizes."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = compose_config([*TINY, "trainer.compile=true", "trainer.max_epochs=1"])
    metrics = fit(cfg, tmp_path)
    assert counters["stats"]["unique_graphs"] >= 1  # the model went through Dynamo
    assert metrics["steps"] == 2 and 0.0 <= metrics["val/dice"] <= 1.0
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert state and not any(key.startswith("_orig_mod.") for key in state)  # the unwrapped module is stored
    torch._dynamo.reset()


def test_a_measured_step_takes_a_compiled_forward_without_asking_its_length():
    """``trial_step(forward=torch.compile(model))`` (the benchmark's compiled case) keeps the compiled module;
    it used to test ``forward or model``, and an OptimizedModule's truth value raised ``TypeError``."""
    from unet_train.build import build_loss, build_model
    from unet_train.engine.runtime import make_runtime
    from unet_train.engine.trial import trial_step

    cfg = compose_config(TINY)
    model = build_model(cfg.model)
    compiled = torch.compile(model)  # wrapping compiles nothing until called
    step = trial_step(cfg, model, build_loss(cfg), make_runtime("cpu", "32", False, False, False), forward=compiled)
    assert step.model is compiled and step.params is model
