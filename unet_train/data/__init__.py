"""Datasets: ISBI 2012, a folder of images and masks, a folder of volumes, synthetic membranes."""

from unet_train.data.augment3d import (
    Compose3D,
    IntensityJitter,
    RandomAxisSwap,
    RandomFlip3D,
    RandomRotate90InPlane,
)
from unet_train.data.base import SegmentationData, SegmentationDataset, Split
from unet_train.data.device_augment import DeviceAugment
from unet_train.data.folder import ImageFolder
from unet_train.data.isbi import ISBI2012
from unet_train.data.synthetic import SyntheticMembranes
from unet_train.data.transforms import ForegroundCrop, RandomBrightnessContrast
from unet_train.data.volumes import VolumeFolder

__all__ = [
    "ISBI2012",
    "Compose3D",
    "DeviceAugment",
    "ForegroundCrop",
    "ImageFolder",
    "IntensityJitter",
    "RandomAxisSwap",
    "RandomBrightnessContrast",
    "RandomFlip3D",
    "RandomRotate90InPlane",
    "SegmentationData",
    "SegmentationDataset",
    "Split",
    "SyntheticMembranes",
    "VolumeFolder",
]
