"""The epoch sampler: each epoch's order and augmentation seeds come from (seed, epoch) alone."""

from __future__ import annotations

import numpy as np

from unet_train.data.sampling import EpochSampler, epoch_seed, set_loader_epoch
from unet_train.data.synthetic import SyntheticMembranes


def test_an_epoch_does_not_depend_on_the_epochs_before_it():
    walked = EpochSampler(10, seed=3)
    for epoch in range(3):
        walked.set_epoch(epoch)
        history = list(walked)
    fresh = EpochSampler(10, seed=3)
    fresh.set_epoch(2)
    assert list(fresh) == history
    assert sorted(i for i, _ in history) == list(range(10))  # a permutation: each item once
    fresh.set_epoch(1)
    assert list(fresh) != history
    assert len({s for _, s in history}) == 10  # one augmentation seed per item


def test_skipping_resumes_part_way_through_an_epoch():
    sampler = EpochSampler(6, seed=0, num_samples=12)  # with replacement
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.set_epoch(4, skip=5)
    assert list(sampler) == whole[5:] and len(sampler) == 7
    assert len(whole) == 12 and all(0 <= i < 6 for i, _ in whole)


def test_epoch_seeds_differ_by_seed_epoch_and_stream():
    seeds = {epoch_seed(s, e, k) for s in (0, 1) for e in (0, 1) for k in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert epoch_seed(-1, 0) == epoch_seed(2**64 - 1, 0)  # negative seeds are allowed


def test_an_items_augmentation_is_fixed_by_its_seed_whatever_came_before():
    import albumentations as A

    data = SyntheticMembranes(image_size=32, num_train=2, num_val=1, num_test=1, patch_size=16, batch_size=2)
    data.train_transform = A.Compose([A.RandomCrop(16, 16), A.HorizontalFlip(p=0.5)])
    dataset = data.dataset("train")
    first = dataset[(1, 1234)]["image"]
    for k in range(5):  # advance the pipeline's generators
        dataset[(0, k)]
    assert np.array_equal(dataset[(1, 1234)]["image"], first)
    assert not all(np.array_equal(dataset[(1, s)]["image"], first) for s in range(5))


def test_the_training_loader_skips_whole_batches():
    data = SyntheticMembranes(image_size=32, num_train=8, num_val=1, num_test=1, patch_size=16, batch_size=2)
    data.num_workers = 0
    loader = data.dataloader("train", seed=5)
    set_loader_epoch(loader, 1)
    names = [b["name"] for b in loader]
    set_loader_epoch(loader, 1, skip_batches=3)
    assert [b["name"] for b in loader] == names[3:] and len(loader) == 1
