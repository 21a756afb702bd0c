"""Tuning the post-processing on validation images improves a deliberately bad default."""

from __future__ import annotations

import numpy as np
import pytest

from unet_train.objects.targets import BOUNDARY, INTERIOR, boundary_target, distance_target
from unet_train.objects.tune import coarse_first, tune


def touching_discs(seed: int) -> np.ndarray:
    """Pairs of discs that touch, plus specks of noise objects in the prediction made below."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), dtype=np.int32)
    for k, (cy, cx) in enumerate([(16, 12), (16, 26), (44, 40), (44, 54)]):
        r = int(rng.integers(6, 8))
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = k + 1
    return labels


def blurred_boundary_outputs(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """A model's soft outputs: a faint boundary where discs touch, and small false-positive specks."""
    rng = np.random.default_rng(seed)
    target = boundary_target(labels)
    distance = distance_target(labels)
    # interiors above 0.55; the band where two discs touch leaks 0.4 of interior (a faint boundary)
    interior = np.where(target == INTERIOR, 0.55 + 0.4 * distance, 0.0)
    touching = (target == BOUNDARY) & (distance == 0)
    interior[touching] = 0.4
    boundary = np.where(target == BOUNDARY, 0.6, 0.0)
    for _ in range(6):  # specks of 2x2 false foreground
        y, x = rng.integers(0, 62, 2)
        if labels[y : y + 2, x : x + 2].max() == 0:
            interior[y : y + 2, x : x + 2] = 0.7
    return {"interior": interior, "boundary": boundary}


def test_tuning_beats_a_bad_default():
    truths = [touching_discs(s) for s in range(3)]
    outputs = [blurred_boundary_outputs(t, s) for s, t in enumerate(truths)]
    # a bad default: seeds at 0.3 cross the faint boundary, so touching discs merge; and specks survive
    grid = {"threshold": [0.5], "seed_threshold": [0.3, 0.5, 0.7, 0.9], "min_size": [1, 8, 16]}
    result = tune("boundary", outputs, truths, grid=grid, metric="f1_50")
    assert result.default_score < 0.8
    assert result.score == 1.0 and result.score > result.default_score
    assert result.params["min_size"] >= 8 and result.params["seed_threshold"] >= 0.5
    assert result.tried == result.total == 12


def test_time_limit_starts_no_point_that_would_end_past_it():
    truths = [touching_discs(0)]
    outputs = [blurred_boundary_outputs(truths[0], 0)]
    ticks = iter(range(0, 1000, 10))  # each call to the clock is 10 s later: each point takes 10 s
    result = tune("boundary", outputs, truths, time_limit=25, clock=lambda: next(ticks))
    assert result.tried == 2 and result.total > 100  # a third point would end at 30 s, past the 25 s
    ticks = iter(range(0, 1000, 10))
    result = tune("boundary", outputs, truths, time_limit=15, clock=lambda: next(ticks))
    assert result.tried == 1  # the default is always tried; a second would end at 20 s


def test_coarse_first_order():
    points = coarse_first({"a": [1, 2, 3], "b": [10, 20]})
    assert points[:2] == [{"a": 1, "b": 10}, {"a": 3, "b": 10}]
    assert len(points) == 6 and {tuple(p.values()) for p in points} == {(a, b) for a in (1, 2, 3) for b in (10, 20)}


def test_unknown_representation_and_no_images_are_refused():
    with pytest.raises(ValueError, match="at least one validation image"):
        tune("boundary", [], [])
    with pytest.raises(ValueError, match="unknown representation"):
        tune("stars", [{}], [np.zeros((4, 4))], grid={"x": [1]})


def test_an_unknown_metric_and_unpaired_images_are_refused_before_the_search():
    truth = touching_discs(0)
    outputs = blurred_boundary_outputs(truth, 0)
    with pytest.raises(ValueError, match=r"metric='f1_5' is not an object metric; choose one of f1_50, "):
        tune("boundary", [outputs], [truth], metric="f1_5")  # was a KeyError after the first grid point
    with pytest.raises(ValueError, match=r"2 predicted image\(s\), 1 label image\(s\) and 1 ignore mask"):
        tune("boundary", [outputs, outputs], [truth])  # the second image was dropped without a word


def test_nan_probabilities_tune_to_nothing_found():
    truth = touching_discs(0)
    nan = {"interior": np.full(truth.shape, np.nan), "boundary": np.full(truth.shape, np.nan)}
    result = tune("boundary", [nan], [truth], time_limit=0)
    assert result.score == 0.0 and result.tried == 1
