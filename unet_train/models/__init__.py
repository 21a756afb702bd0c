"""UNet models: one network with independently chosen encoder, skips and deep supervision."""

from unet_train.models.unet import UNet

__all__ = ["UNet"]
