"""HD95 on hand-built masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unet_train.metrics import hd95
from unet_train.metrics.distance import contour


def test_contour_of_a_square_is_its_outer_ring():
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    ring = contour(mask)
    assert ring.sum() == 16 and not ring[2:5, 2:5].any()


def test_identical_masks_score_zero_and_shifted_points_their_distance():
    square = np.zeros((20, 20), dtype=bool)
    square[5:15, 5:15] = True
    assert hd95(square, square) == 0.0
    a, b = np.zeros((12, 12), dtype=bool), np.zeros((12, 12), dtype=bool)
    a[5, 5], b[5, 9] = True, True  # single pixels, 4 apart
    assert hd95(a, b) == pytest.approx(4.0)


def test_the_95th_percentile_ignores_a_rare_outlier():
    square = np.zeros((40, 40), dtype=bool)
    square[5:15, 5:15] = True  # contour: 36 pixels
    pred = square.copy()
    pred[35, 35] = True  # one stray pixel far away: 1 of 37 contour distances is large
    # Sorted directed distances pred -> truth: 36 zeros, then ~28.3; numpy's linear percentile
    # at 95% falls at rank 0.95 * 36 = 34.2, between two zeros.
    assert hd95(pred, square) == 0.0


def test_empty_masks_have_defined_values():
    empty = np.zeros((30, 40), dtype=bool)
    some = empty.copy()
    some[3:6, 3:6] = True
    assert hd95(empty, empty) == 0.0
    assert hd95(empty, some) == pytest.approx(50.0) == pytest.approx(math.hypot(30, 40))
    assert hd95(some, empty) == pytest.approx(50.0)
