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


def test_a_full_mask_is_not_an_empty_one():
    """A mask covering the image has no contour inside it; it must not score as 'both empty' (0.0)."""
    empty = np.zeros((30, 40), dtype=bool)
    full = ~empty
    assert hd95(full, empty) == pytest.approx(50.0)  # exactly one mask empty: the image diagonal
    assert hd95(empty, full) == pytest.approx(50.0)
    assert hd95(full, full) == 0.0
    # Full against all but the centre pixel of a 5x5 image: the full mask's contour is the image frame.
    # Hole contour -> frame: 1 for each of its 4 pixels. Frame -> hole contour: 1 (4 edge middles),
    # sqrt(2) (8 pixels next to the corners), sqrt(5) (4 corners); the 95th percentile of those 16
    # (rank 0.95 * 15 = 14.25) lies between two sqrt(5).
    holed = np.ones((5, 5), dtype=bool)
    holed[2, 2] = False
    assert hd95(np.ones((5, 5), dtype=bool), holed) == pytest.approx(math.sqrt(5))
    assert hd95(holed, np.ones((5, 5), dtype=bool)) == pytest.approx(math.sqrt(5))
