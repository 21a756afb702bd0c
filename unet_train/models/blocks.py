"""Small reusable blocks: norm factory, conv-norm-act, the encoder level blocks."""

from __future__ import annotations

import torch
from torch import nn

from unet_train.errors import ConfigError

NORMS = ("batch", "instance", "group", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Return a 2D normalisation layer picked by name (``batch``, ``instance``, ``group``, ``none``)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"model.norm={kind!r} is not known; choose one of {', '.join(NORMS)}.")


class ConvNormAct(nn.Sequential):
    """``conv(k x k, dilation) -> norm -> ReLU``; the convolution has no bias when a norm follows."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1, norm: str = "batch"
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=norm == "none"),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two ``conv3x3-norm-ReLU`` layers: one level of the UNet (Ronneberger et al. 2015, with BN).

    With ``dilation > 1`` both convolutions are dilated, as in the cross-scale dilated encoder.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", dilation: int = 1) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, dilation=dilation, norm=norm),
            ConvNormAct(out_channels, out_channels, dilation=dilation, norm=norm),
        )
        self.out_channels = out_channels


class DenseBlock(nn.Module):
    """A DenseNet block (Huang et al. 2017, arXiv:1608.06993): each layer sees the concatenation of
    the block's input and all earlier layers' outputs, and adds ``growth_rate`` channels.

    Output channels: ``in_channels + num_layers * growth_rate``. Each layer is a ``conv3x3-norm-ReLU``
    like the rest of this UNet (DenseNet orders it norm-ReLU-conv) and there is no 1x1 bottleneck.
    """

    def __init__(self, in_channels: int, num_layers: int = 4, growth_rate: int = 16, norm: str = "batch") -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ConvNormAct(in_channels + i * growth_rate, growth_rate, norm=norm) for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)
