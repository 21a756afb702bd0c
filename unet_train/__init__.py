"""unet-train: config-driven UNet segmentation training for 2D images."""

__version__ = "0.1.0"
