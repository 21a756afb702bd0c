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
from unet_train.models.blocks import DenseBlock, make_norm

SKIPS = ("concat", "attention", "attention_gate", "dense")


class PlainSkip(nn.Module):
    """The UNet's plain skip: the encoder map goes to the concatenation unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return features


class SpatialAttentionSkip(nn.Module):
    """Spatial attention on the skip (the CBAM spatial branch, Woo et al. 2018).

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
    """The additive attention gate of Attention U-Net (Oktay et al. 2018, arXiv:1804.03999).

    ``alpha = sigmoid(psi(ReLU(W_x x + up(W_g g))))`` with 1x1 convolutions; ``g`` is the coarser
    decoder signal, projected at its own resolution and upsampled bilinearly to the skip's.
    """

    def __init__(self, channels: int, gate_channels: int, inter_channels: int | None = None, norm: str = "batch"):
        super().__init__()
        inter = inter_channels or max(channels // 2, 1)
        self.project_x = nn.Sequential(nn.Conv2d(channels, inter, 1, bias=False), make_norm(norm, inter))
        self.project_g = nn.Sequential(nn.Conv2d(gate_channels, inter, 1, bias=False), make_norm(norm, inter))
        self.psi = nn.Conv2d(inter, 1, 1)
        self.out_channels = channels

    def attention_map(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Return the (N, 1, H, W) gate coefficients in (0, 1)."""
        g = F.interpolate(self.project_g(gate), size=features.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.psi(F.relu(self.project_x(features) + g)))

    def forward(self, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return features * self.attention_map(features, gate)


class DenseSkip(nn.Module):
    """A DenseBlock (Huang et al. 2017) on the skip pathway before the concatenation, in the spirit of
    UNet++'s dense skip pathways (Zhou et al. 2018)."""

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
        return AttentionGateSkip(channels, gate_channels, norm=norm)
    if kind == "dense":
        return DenseSkip(channels, dense_layers, dense_growth, norm)
    raise ConfigError(f"model.skip={kind!r} is not known; choose one of {', '.join(SKIPS)}.")
