"""Skip connections: what happens to an encoder feature map before the decoder concatenates it.

Every skip module is called as ``skip(features, gate)``: ``features`` is the encoder's map at
this level, ``gate`` is the coarser decoder map one level down (before upsampling). A skip
exposes ``out_channels``, the channels it hands to the concatenation, so the decoder is built
from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet_train.errors import ConfigError
from unet_train.models.blocks import DenseBlock

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

    Mean and max over channels give a 2-channel map; a ``k x k`` convolution and a sigmoid turn
    it into one weight in (0, 1) per pixel, which multiplies the encoder features.
    """

    def __init__(self, channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.out_channels = channels

    def attention_map(self, features: torch.Tensor) -> torch.Tensor:
        """Return the (N, 1, H, W) weights in (0, 1)."""
        pooled = torch.cat([features.mean(dim=1, keepdim=True), features.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return features * self.attention_map(features)


class AttentionGateSkip(nn.Module):
    """The additive attention gate of Attention U-Net (Oktay et al. 2018, arXiv:1804.03999, Fig. 2).

    The coefficients are computed on the coarse grid of the gating signal ``g`` (the decoder map
    one level down) and resampled to the skip's grid, as in the paper::

        q = psi(ReLU(W_x(x) + W_g(g) + b_g)) + b_psi,   alpha = up(sigmoid(q)),   out = alpha * x

    ``W_x`` is a 2x2 stride-2 convolution that brings ``x`` to the grid of ``g`` (the paper's
    reference implementation does the same), ``W_g`` and ``psi`` are 1x1 convolutions, and ``up``
    is bilinear resampling. As in the paper's equations, there is no normalisation inside the gate
    and no output projection (the reference implementation adds a 1x1 conv + BN after the multiply).

    Args:
        channels: channels of the skip features ``x`` (kept unchanged at the output).
        gate_channels: channels of the gating signal ``g``.
        inter_channels: channels of the intermediate space ``F_int``; default ``channels // 2``.
    """

    def __init__(self, channels: int, gate_channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(channels // 2, 1)
        self.project_x = nn.Conv2d(channels, inter, kernel_size=2, stride=2, bias=False)
        self.project_g = nn.Conv2d(gate_channels, inter, kernel_size=1)
        self.psi = nn.Conv2d(inter, 1, kernel_size=1)
        self.out_channels = channels

    def attention_map(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Return the (N, 1, H, W) gate coefficients in (0, 1) on the skip's grid."""
        x = self.project_x(features)
        g = self.project_g(gate)
        if g.shape[-2:] != x.shape[-2:]:
            # Only when the skip is not exactly twice the gate's size (the UNet pads, so never there).
            g = F.interpolate(g, size=x.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(x + g)))
        return F.interpolate(alpha, size=features.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return features * self.attention_map(features, gate)


class DenseSkip(nn.Module):
    """A DenseBlock (Huang et al. 2017, arXiv:1608.06993) on the skip pathway before the concatenation.

    The skip grows from ``channels`` to ``channels + num_layers * growth_rate``; the decoder reads
    ``out_channels`` to size its first convolution. Dense convolution blocks on the skip pathways
    are also the idea of UNet++ (Zhou et al. 2018, arXiv:1807.10165).
    """

    def __init__(self, channels: int, num_layers: int = 4, growth_rate: int = 16, norm: str = "batch") -> None:
        super().__init__()
        self.block = DenseBlock(channels, num_layers, growth_rate, norm)
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
) -> nn.Module:
    """Build the skip module named by ``model.skip``."""
    if kind == "concat":
        return PlainSkip(channels)
    if kind == "attention":
        return SpatialAttentionSkip(channels, attention_kernel)
    if kind == "attention_gate":
        return AttentionGateSkip(channels, gate_channels)
    if kind == "dense":
        return DenseSkip(channels, dense_layers, dense_growth, norm)
    raise ConfigError(f"model.skip={kind!r} is not known; choose one of {', '.join(SKIPS)}.")
