"""Segmentation metrics: overlap (Dice, IoU), pixel error."""

from unet_train.metrics.overlap import ConfusionCounts, confusion_counts, overlap_scores, predict_labels

__all__ = ["ConfusionCounts", "confusion_counts", "overlap_scores", "predict_labels"]
