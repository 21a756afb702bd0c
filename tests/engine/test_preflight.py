"""Numeric settings of the free-form groups are checked before anything is built."""

from __future__ import annotations

import pytest

from unet_train.engine.preflight import check_numbers
from unet_train.errors import ConfigError

from ..conftest import TINY, compose_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=abc", "seed='abc' must be an integer."),
        ("model.base_channels=wide", "model.base_channels='wide' must be a positive integer."),
        ("model.depth=0", "model.depth=0 must be a positive integer."),
        ("data.num_workers=-1", "data.num_workers=-1 must be 0 or a positive integer, or auto."),
        ("data.num_classes=1", "data.num_classes=1 must be an integer >= 2, or auto."),
        ("data.batch_size=true", "data.batch_size=True must be a positive integer."),
        ("data.num_workers=many", "data.num_workers='many' must be 0 or a positive integer, or auto."),
        ("optim.lr=0", "optim.lr=0 must be a positive number."),
        ("optim.lr=inf", "optim.lr=inf must be a positive number."),
        ("optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001 must be a finite number >= 0."),
    ],
)
def test_bad_numbers_are_named_with_what_they_must_be(override, message):
    with pytest.raises(ConfigError) as info:
        check_numbers(compose_config([*TINY, override]))
    assert str(info.value) == message


def test_the_shipped_configs_pass():
    check_numbers(compose_config(TINY))
    check_numbers(compose_config(["data=folder", "data.root=x", "optim=sgd"]))
