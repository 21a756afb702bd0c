"""Building the run's objects from the real configs."""

from __future__ import annotations

import re

import pytest

from unet_train.build import build_model, build_optimizer
from unet_train.errors import ConfigError

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


@pytest.mark.parametrize(
    ("depth", "size"),
    [(12, r"1\.27e\+11 weights \(474\.7 GiB in float32\)"), (40, "more weights than a tensor can hold")],
)
def test_a_model_larger_than_memory_is_refused_before_it_is_built(depth, size, monkeypatch):
    """``model.depth=40`` was killed by the kernel with no word: the weights are counted on ``meta`` first."""
    monkeypatch.setattr("unet_train.build.available_memory", lambda: 8 * 2**30)
    cfg = compose_config([*TINY, f"model.depth={depth}", "model.base_channels=16"]).model
    with pytest.raises(ConfigError) as caught:
        build_model(cfg)
    assert re.fullmatch(
        rf"The model asked for \(model\.depth={depth}, model\.base_channels=16\) has {size}, more than the 8\.0 GiB "
        r"of free memory; lower model\.depth or model\.base_channels\.",
        str(caught.value),
    )
    assert sum(p.numel() for p in build_model(compose_config(TINY).model).parameters()) > 0  # a small one builds
