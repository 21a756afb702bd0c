"""Explicit pooling factors are bounded: the model pads each input to the total pooling per axis, so a
checkpoint's config that pools by thousands (weights of the same shapes as pooling by 2) would turn every
tile into a gigantic padded block."""

from __future__ import annotations

import pytest
import torch

from unet_train.errors import CheckpointError, ConfigError
from unet_train.models.unet import UNet, resolve_pool_factors
from unet_train.predict import load_model

OPTIONS = {
    "in_channels": 1,
    "out_channels": 2,
    "base_channels": 2,
    "depth": 2,
    "spatial_dims": 3,
    "upsample": "bilinear",
}
HUGE = [[1, 4096, 4096], [1, 2, 2]]


def test_pool_factors_that_pool_an_axis_by_thousands_are_refused():
    with pytest.raises(ConfigError, match=r"pools axis 1 by 8192 in all; at most 256"):
        resolve_pool_factors(HUGE, 2, 3)
    assert resolve_pool_factors([[1, 2, 2], [2, 2, 2]], 2, 3) == [(1, 2, 2), (2, 2, 2)]
    assert resolve_pool_factors([[2, 2]] * 9, 9, 2)[0] == (2, 2)  # 512 = 2**depth: what a default model pads to


def test_a_checkpoint_whose_config_pools_by_thousands_is_refused_before_predicting(tmp_path):
    state = UNet(**OPTIONS, pool_factors=[[1, 2, 2], [1, 2, 2]]).state_dict()  # the same shapes as HUGE's
    model = {"_target_": "unet_train.models.UNet", **OPTIONS, "pool_factors": HUGE}
    path = tmp_path / "crafted.pt"
    torch.save({"format": "unet-train/1", "config": {"model": model, "data": {}}, "model": state}, path)
    with pytest.raises((ConfigError, CheckpointError), match=r"pools axis 1 by 8192 in all"):
        load_model(path)
