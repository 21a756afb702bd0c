"""V-Rand / V-Info on hand-built label images, against numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unet_train.metrics import RandInfoSweep, rand_info_scores, slice_scores, thinned_segments
from unet_train.metrics.isbi import THRESHOLDS, ground_truth_segments

# Ground truth, 3x7: two cells of 9 pixels (A: columns 0-2, B: columns 4-6) and a membrane column 3.
CELLS = np.ones((3, 7), dtype=bool)
CELLS[:, 3] = False
TRUTH = ground_truth_segments(CELLS)
# The prediction that splits cell A with a border on row 1.
SPLIT = CELLS.copy()
SPLIT[1, 0:3] = False


def test_ground_truth_segments_are_4_connected_cells():
    assert TRUTH.tolist() == [[1, 1, 1, 0, 2, 2, 2]] * 3
    diagonal = np.array([[1, 0], [0, 1]], dtype=bool)
    assert ground_truth_segments(diagonal).max() == 2  # touching corners are two cells


def test_thinning_keeps_one_pixel_lines_as_singletons():
    # The watershed grows B into the membrane pixel (1, 3) (its only cell neighbour); pixels between
    # two cells stay on the line and each becomes its own segment (labels 4..8).
    assert thinned_segments(SPLIT).tolist() == [
        [1, 1, 1, 4, 2, 2, 2],
        [5, 6, 7, 2, 2, 2, 2],
        [3, 3, 3, 8, 2, 2, 2],
    ]
    assert thinned_segments(np.zeros((2, 2), dtype=bool)).tolist() == [[1, 2], [3, 4]]


def test_perfect_prediction_scores_one():
    assert rand_info_scores(TRUTH, thinned_segments(CELLS)) == (1.0, 1.0)


def test_merge_of_two_cells():
    # Prediction: no border, one segment holding all 18 scored pixels.
    # Rand (scikit-image counts ordered pairs of distinct pixels, n(n-1) per table cell):
    #   joint: 9*8 + 9*8 = 144; truth: 144; prediction: 18*17 = 306
    #   F = 144 / (0.5*144 + 0.5*306) = 144 / 225 = 0.64
    # Info: H(T) = 1 bit (two halves), H(P) = 0, I = 0 -> F = 2*0 / (1 + 0) = 0.
    vrand, vinfo = rand_info_scores(TRUTH, thinned_segments(np.ones((3, 7), dtype=bool)))
    assert vrand == pytest.approx(0.64)
    assert vinfo == pytest.approx(0.0)


def test_split_of_one_cell():
    # Scored pixels (18) in the predicted segments: A-top 3, A-bottom 3, three line singletons (row 1),
    # B 9 (the line pixels in column 3 are not scored: ground-truth membrane).
    # Rand: joint 3*2 + 3*2 + 9*8 = 84; truth 2*9*8 = 144; prediction 3*2 + 3*2 + 9*8 = 84
    #   F = 84 / (0.5*144 + 0.5*84) = 84 / 114
    # Info: every predicted segment lies in one true cell, so H(T|P) = 0 and I = H(T) = 1 bit;
    #   H(P) = 2 * (3/18) log2(18/3) + 3 * (1/18) log2(18) + (9/18) log2(2)
    #   F = 2 * 1 / (1 + H(P)) ~= 0.6543
    h_pred = 2 * (3 / 18) * math.log2(6) + 3 * (1 / 18) * math.log2(18) + 0.5
    vrand, vinfo = rand_info_scores(TRUTH, thinned_segments(SPLIT))
    assert vrand == pytest.approx(84 / 114)
    assert vinfo == pytest.approx(2 / (1 + h_pred))
    assert vinfo == pytest.approx(0.6543, abs=1e-4)


def test_empty_prediction_and_empty_ground_truth_are_defined():
    # Everything predicted as border: 18 singletons. Rand joint = 0 -> F = 0.
    # Info: I = H(T) = 1, H(P) = log2(18) -> F = 2 / (1 + log2 18).
    vrand, vinfo = rand_info_scores(TRUTH, thinned_segments(np.zeros((3, 7), dtype=bool)))
    assert vrand == 0.0
    assert vinfo == pytest.approx(2 / (1 + math.log2(18)))
    # No ground-truth cell pixel: nothing is scored.
    no_cells = ground_truth_segments(np.zeros((3, 7), dtype=bool))
    assert rand_info_scores(no_cells, thinned_segments(CELLS)) == (1.0, 1.0)
    # One ground-truth cell predicted as one cell: both entropies are 0.
    whole = ground_truth_segments(np.ones((4, 4), dtype=bool))
    assert rand_info_scores(whole, thinned_segments(np.ones((4, 4), dtype=bool))) == (1.0, 1.0)
    # Single-pixel cells predicted as single pixels: no pair anywhere, the partitions agree.
    dots = np.zeros((3, 3), dtype=bool)
    dots[0, 0] = dots[2, 2] = True
    assert rand_info_scores(ground_truth_segments(dots), thinned_segments(dots))[0] == 1.0
    for value in rand_info_scores(TRUTH, np.zeros((3, 7), dtype=np.int64)):
        assert not math.isnan(value)


def test_threshold_sweep_averages_slices_and_reports_the_best_threshold():
    # Slice 1: cells 0.05, true membrane 0.35, the split row 0.25. Predicted cell = prob <= t:
    #   t = 0.0: all border (V-Rand 0); t = 0.1, 0.2: split; t = 0.3: perfect; t >= 0.4: merge.
    prob = np.full((3, 7), 0.05)
    prob[:, 3] = 0.35
    prob[1, 0:3] = 0.25
    scores = slice_scores(prob, CELLS)
    assert scores.shape == (len(THRESHOLDS), 2)
    assert scores[0, 0] == 0.0
    assert scores[1, 0] == pytest.approx(84 / 114) and scores[2, 0] == pytest.approx(84 / 114)
    assert scores[3].tolist() == [1.0, 1.0]
    assert scores[4:, 0] == pytest.approx([0.64] * 7)
    # Slice 2 predicts no border at all: a merge at every threshold.
    sweep = RandInfoSweep()
    sweep.add(prob, CELLS)
    sweep.add(np.zeros((3, 7)), CELLS)
    best = sweep.best()
    assert best["vrand_threshold"] == 0.3 and best["vinfo_threshold"] == 0.3
    assert best["vrand"] == pytest.approx((1.0 + 0.64) / 2)
    assert best["vinfo"] == pytest.approx((1.0 + 0.0) / 2)
    assert sweep.per_slice() == [{"vrand": 1.0, "vinfo": 1.0}, pytest.approx({"vrand": 0.64, "vinfo": 0.0})]
    assert RandInfoSweep().best() == {}
