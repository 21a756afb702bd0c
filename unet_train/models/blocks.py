"""Small reusable blocks: the layer factory by spatial dims, norm factory, conv-norm-act, the level blocks.

Every block takes ``spatial_dims`` (2 or 3) and per-axis kernel sizes, so one code path builds a 2D
and a 3D UNet (as MONAI's blocks do); the 2D layers are the ones the 2D UNet always had, so 2D state
dicts keep their names and shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unet_train.errors import ConfigError

NORMS = ("batch", "instance", "group", "none")
SPATIAL_DIMS = (2, 3)

# One class per spatial dimensionality: (2D, 3D).
LAYERS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "conv": (nn.Conv2d, nn.Conv3d),
    "conv_transpose": (nn.ConvTranspose2d, nn.ConvTranspose3d),
    "max_pool": (nn.MaxPool2d, nn.MaxPool3d),
    "batch_norm": (nn.BatchNorm2d, nn.BatchNorm3d),
    "instance_norm": (nn.InstanceNorm2d, nn.InstanceNorm3d),
    "dropout": (nn.Dropout2d, nn.Dropout3d),
}
# ``F.interpolate``'s linear mode for each dimensionality.
LINEAR_MODES = {2: "bilinear", 3: "trilinear"}


def check_spatial_dims(spatial_dims: int) -> int:
    """``spatial_dims`` if it is 2 or 3, else a ConfigError naming ``model.spatial_dims``."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SPATIAL_DIMS:
        raise ConfigError(f"model.spatial_dims={spatial_dims!r} is not supported; use 2 (images) or 3 (volumes).")
    return int(spatial_dims)


def layer(name: str, spatial_dims: int) -> type[nn.Module]:
    """The torch layer class ``name`` (a key of ``LAYERS``) for 2 or 3 spatial dims, e.g. ``layer("conv", 3)``."""
    return LAYERS[name][check_spatial_dims(spatial_dims) - 2]


def make_norm(kind: str, channels: int, spatial_dims: int = 2) -> nn.Module:
    """Return a normalisation layer picked by name (``batch``, ``instance``, ``group``, ``none``)."""
    if kind == "batch":
        return layer("batch_norm", spatial_dims)(channels)
    if kind == "instance":
        return layer("instance_norm", spatial_dims)(channels, affine=True)
    if kind == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"model.norm={kind!r} is not known; choose one of {', '.join(NORMS)}.")


def per_axis(value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """``value`` repeated on every axis, or the per-axis sequence itself (as a tuple of ints)."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    return tuple(int(v) for v in value)


class ConvNormAct(nn.Sequential):
    """``conv(k, dilation) -> norm -> ReLU``; the convolution has no bias when a norm follows.

    ``kernel_size`` may differ per axis (``(1, 3, 3)`` on a volume whose z is still much coarser than
    y and x); each axis is padded to keep its size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        dilation: int = 1,
        norm: str = "batch",
        spatial_dims: int = 2,
    ) -> None:
        kernel = per_axis(kernel_size, spatial_dims)
        dilations = tuple(dilation if k > 1 else 1 for k in kernel)  # a 1-wide kernel has no holes to widen
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilations, kernel, strict=True))
        conv = layer("conv", spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, kernel, padding=padding, dilation=dilations, bias=norm == "none"),
            make_norm(norm, out_channels, spatial_dims),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two ``conv3x3-norm-ReLU`` layers: one level of the UNet (Ronneberger et al. 2015, with BN).

    With ``dilation > 1`` both convolutions are dilated, as in the cross-scale dilated encoder.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str = "batch",
        dilation: int = 1,
        kernel_size: int | Sequence[int] = 3,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, kernel_size, dilation, norm, spatial_dims),
            ConvNormAct(out_channels, out_channels, kernel_size, dilation, norm, spatial_dims),
        )
        self.out_channels = out_channels


class DenseBlock(nn.Module):
    """A DenseNet block (Huang et al. 2017, arXiv:1608.06993): each layer sees the concatenation of
    the block's input and all earlier layers' outputs, and adds ``growth_rate`` channels.

    Output channels: ``in_channels + num_layers * growth_rate``. Each layer is a ``conv3x3-norm-ReLU``
    like the rest of this UNet (DenseNet orders it norm-ReLU-conv) and there is no 1x1 bottleneck.
    """

    def __init__(
        self,
        in_channels: int,
        num_layers: int = 4,
        growth_rate: int = 16,
        norm: str = "batch",
        kernel_size: int | Sequence[int] = 3,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ConvNormAct(in_channels + i * growth_rate, growth_rate, kernel_size, norm=norm, spatial_dims=spatial_dims)
            for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for block in self.layers:
            features.append(block(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)
