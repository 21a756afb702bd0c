"""Inference: test-time augmentation and sliding-window (tiled) prediction on images of any size."""

from unet_train.inference.tiling import TiledPredictor, gaussian_weights, tile_starts
from unet_train.inference.tta import TTALogits, predict_probabilities

__all__ = ["TTALogits", "TiledPredictor", "gaussian_weights", "predict_probabilities", "tile_starts"]
