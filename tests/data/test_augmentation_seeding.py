"""Augmentations follow the run's seed, in the main process and in loader workers."""

from __future__ import annotations

import pytest
import torch

from unet_train.build import build_data

from ..conftest import TINY, compose_config


def one_epoch(num_workers: int, seed: int) -> list[torch.Tensor]:
    data = build_data(compose_config([*TINY, f"data.num_workers={num_workers}"]).data)
    return [batch["image"] for batch in data.dataloader("train", seed=seed)]  # fit() passes cfg.seed


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_same_crops_other_seed_other_crops(num_workers):
    first, again, other = one_epoch(num_workers, 0), one_epoch(num_workers, 0), one_epoch(num_workers, 1)
    assert len(first) == 2  # 8 images in batches of 4
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
