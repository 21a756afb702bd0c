"""Building the run's objects from the real configs."""

from __future__ import annotations

import pytest

from unet_train.build import build_model, build_optimizer

from .conftest import TINY, compose_config


@pytest.mark.parametrize("optim", ["adam", "adamw", "sgd"])
def test_the_readme_form_optim_fused_false_turns_the_fused_kernel_off(optim):
    """``optim.fused=false`` (as the README writes it, no ``+``) composes and wins over fit()'s fused default."""
    model = build_model(compose_config(TINY).model)
    default = compose_config([*TINY, f"optim={optim}"])
    assert default.optim.fused is None  # a real key of every optim config: null lets the loop choose
    assert build_optimizer(default, model, fused=True).defaults["fused"] is True
    off = compose_config([*TINY, f"optim={optim}", "optim.fused=false"])
    assert build_optimizer(off, model, fused=True).defaults["fused"] is False
