"""Moved to :mod:`unet_train.data.tiff_volumes`: importable from here as before."""

from unet_train.data.tiff_volumes import *  # noqa: F403
