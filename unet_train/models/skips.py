"""Skip connections: what happens to an encoder feature map before the decoder concatenates it.

Every skip module is called as ``skip(features, gate)``: ``features`` is the encoder's map at
this level, ``gate`` is the coarser decoder map one level down (before upsampling). A skip
exposes ``out_channels``, the channels it hands to the concatenation, so the decoder is built
from it. Every skip works in 2D and 3D (``spatial_dims``); ``kernel_size`` is the level's
per-axis convolution kernel and ``factor`` the per-axis pooling between this level and the next.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unet_train.errors import ConfigError
from unet_train.models.blocks import LINEAR_MODES, DenseBlock, layer, per_axis

SKIPS = ("concat", "attention", "attention_gate", "dense")


class PlainSkip(nn.Module):
    """The UNet's plain skip: the encoder map goes to the concatenation unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return features


class SpatialAttentionSkip(nn.Module):
    """Spatial attention on the skip (the spatial branch of CBAM, Woo et al. 2018, arXiv:1807.06521).

    Mean and max over channels give a 2-channel map; a ``k x k`` (``k x k x k``) convolution and a
    sigmoid turn it into one weight in (0, 1) per pixel, which multiplies the encoder features.
    ``kernel_size`` may differ per axis: the UNet gives 1 on an axis that is still much coarser
    than the others (the same axes on which its 3x3 convolutions are 1 wide).
    """

    def __init__(self, channels: int, kernel_size: int | Sequence[int] = 7, spatial_dims: int = 2) -> None:
        super().__init__()
        kernel = per_axis(kernel_size, spatial_dims)
        self.conv = layer("conv", spatial_dims)(2, 1, kernel, padding=tuple(k // 2 for k in kernel))
        self.out_channels = channels

    def attention_map(self, features: torch.Tensor) -> torch.Tensor:
        """Return the (N, 1, [D,] H, W) weights in (0, 1)."""
        pooled = torch.cat([features.mean(dim=1, keepdim=True), features.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return features * self.attention_map(features)


class AttentionGateSkip(nn.Module):
    """The additive attention gate of Attention U-Net (Oktay et al. 2018, arXiv:1804.03999, Fig. 2).

    The coefficients are computed on the coarse grid of the gating signal ``g`` (the decoder map
    one level down) and resampled to the skip's grid, as in the paper::

        q = psi(ReLU(W_x(x) + W_g(g) + b_g)) + b_psi,   alpha = up(sigmoid(q)),   out = alpha * x

    ``W_x`` is a 2x2 stride-2 convolution (kernel and stride ``factor``, the level's pooling) that
    brings ``x`` to the grid of ``g`` (the paper's reference implementation does the same), ``W_g``
    and ``psi`` are 1x1 convolutions, and ``up`` is (bi/tri)linear resampling. As in the paper's
    equations, there is no normalisation inside the gate and no output projection (the reference
    implementation adds a 1x1 conv + BN after the multiply).

    Args:
        channels: channels of the skip features ``x`` (kept unchanged at the output).
        gate_channels: channels of the gating signal ``g``.
        inter_channels: channels of the intermediate space ``F_int``; default ``channels // 2``.
        factor: the pooling between the skip's level and the gate's, per axis (or one for all axes).
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        channels: int,
        gate_channels: int,
        inter_channels: int | None = None,
        factor: int | Sequence[int] = 2,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        inter = inter_channels or max(channels // 2, 1)
        conv = layer("conv", spatial_dims)
        stride = per_axis(factor, spatial_dims)
        self.project_x = conv(channels, inter, kernel_size=stride, stride=stride, bias=False)
        self.project_g = conv(gate_channels, inter, kernel_size=1)
        self.psi = conv(inter, 1, kernel_size=1)
        self.mode = LINEAR_MODES[spatial_dims]
        self.out_channels = channels

    def attention_map(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Return the (N, 1, [D,] H, W) gate coefficients in (0, 1) on the skip's grid."""
        x = self.project_x(features)
        g = self.project_g(gate)
        if g.shape[2:] != x.shape[2:]:
            # Only when the skip is not exactly ``factor`` times the gate's size (the UNet pads, so never there).
            g = F.interpolate(g, size=x.shape[2:], mode=self.mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(x + g)))
        return F.interpolate(alpha, size=features.shape[2:], mode=self.mode, align_corners=False)

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return features * self.attention_map(features, gate)


class DenseSkip(nn.Module):
    """A DenseBlock (Huang et al. 2017, arXiv:1608.06993) on the skip pathway before the concatenation.

    The skip grows from ``channels`` to ``channels + num_layers * growth_rate``; the decoder reads
    ``out_channels`` to size its first convolution. Dense convolution blocks on the skip pathways
    are also the idea of UNet++ (Zhou et al. 2018, arXiv:1807.10165).
    """

    def __init__(
        self,
        channels: int,
        num_layers: int = 4,
        growth_rate: int = 16,
        norm: str = "batch",
        kernel_size: int | Sequence[int] = 3,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.block = DenseBlock(channels, num_layers, growth_rate, norm, kernel_size, spatial_dims)
        self.out_channels = self.block.out_channels

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return self.block(features)


def make_skip(
    kind: str,
    channels: int,
    gate_channels: int,
    *,
    norm: str,
    attention_kernel: int,
    dense_layers: int,
    dense_growth: int,
    kernel_size: Sequence[int] = (3, 3),
    factor: Sequence[int] = (2, 2),
) -> nn.Module:
    """Build the skip module named by ``model.skip`` for a level with per-axis ``kernel_size`` and pooling ``factor``.

    The attention kernel is ``attention_kernel`` wide on the axes where the level's convolutions are
    3 wide, and 1 on the axes where they are 1 (still much coarser than the others).
    """
    dims = len(kernel_size)
    if kind == "concat":
        return PlainSkip(channels)
    if kind == "attention":
        kernel = [attention_kernel if k > 1 else 1 for k in kernel_size]
        return SpatialAttentionSkip(channels, kernel, dims)
    if kind == "attention_gate":
        return AttentionGateSkip(channels, gate_channels, factor=factor, spatial_dims=dims)
    if kind == "dense":
        return DenseSkip(channels, dense_layers, dense_growth, norm, kernel_size, dims)
    raise ConfigError(f"model.skip={kind!r} is not known; choose one of {', '.join(SKIPS)}.")
