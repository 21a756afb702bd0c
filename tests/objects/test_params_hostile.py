"""Hostile post-processing parameters, from a checkpoint or the command line, refused in one line (no model)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from unet_train.engine.objects import params_for
from unet_train.errors import ConfigError
from unet_train.objects.params import check_stored

INSTANCES = {"labels": "instances", "target": "boundary"}
GOOD = {"threshold": 0.5, "seed_threshold": 0.5, "min_size": 1}


@pytest.mark.parametrize("name", ["threshold", "min_size"])
def test_a_stored_integer_too_large_for_a_float_is_refused_as_out_of_range(name):
    entry = {"target": "boundary", "params": {**GOOD, name: 10**400}}
    with pytest.raises(ValueError, match=f"its postprocess.params.{name}=.* must be a"):
        check_stored(entry, INSTANCES)


def test_an_override_too_large_for_a_float_is_a_config_error():
    cfg = OmegaConf.create({"objects": {"min_size": 10**40}})
    with pytest.raises(ConfigError, match=r"objects.min_size=10+ must be a whole number"):
        params_for(cfg, "boundary", None)
