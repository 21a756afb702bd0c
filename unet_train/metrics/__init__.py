"""Segmentation metrics: overlap (Dice, IoU), pixel error, ISBI V-Rand/V-Info, HD95, object metrics."""

from unet_train.metrics.distance import hd95
from unet_train.metrics.isbi import RandInfoSweep, rand_info_scores, slice_scores, thinned_segments
from unet_train.metrics.objects import object_scores
from unet_train.metrics.overlap import ConfusionCounts, confusion_counts, overlap_scores, predict_labels

__all__ = [
    "ConfusionCounts",
    "RandInfoSweep",
    "confusion_counts",
    "hd95",
    "object_scores",
    "overlap_scores",
    "predict_labels",
    "rand_info_scores",
    "slice_scores",
    "thinned_segments",
]
