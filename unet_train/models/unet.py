"""One UNet whose encoder, skip connections and deep supervision are chosen independently.

``UNet(encoder="dilated", skip="attention", deep_supervision=True)`` is as valid as the plain
network of Ronneberger et al. 2015 (``encoder="double_conv", skip="concat"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unet_train.errors import ConfigError
from unet_train.models.blocks import DoubleConv
from unet_train.models.skips import make_skip

ENCODERS = ("double_conv", "dilated")
UPSAMPLES = ("transpose", "bilinear")


def default_dilation_rates(depth: int) -> list[int]:
    """Cross-scale rates, one per level, shallow first: 1 at the shallow levels, 3 and 5 at the two deepest.

    The first level always keeps rate 1 (it sees full-resolution detail), so ``depth=1`` gives ``[1, 3]``.
    """
    deep = [3, 5][:depth]
    return [1] * (depth + 1 - len(deep)) + deep


class Encoder(nn.Module):
    """The contracting path: ``depth + 1`` levels of DoubleConv, 2x2 max-pooling between them.

    With per-level ``dilation_rates`` it is the cross-scale dilated encoder: both convolutions of a
    level are dilated by its rate (dilated convolutions: Yu & Koltun 2016, arXiv:1511.07122). Small
    rates at the shallow levels keep fine membrane detail; the co-prime rates 3 and 5 at the deep
    levels widen the receptive field without the gridding holes of equal rates (Wang et al. 2018,
    arXiv:1702.08502). The schedule 1, ..., 1, 3, 5 is the project's (issue 3), set in YAML.

    ``forward`` returns the feature map of every level, shallow first; ``out_channels`` lists
    their channels.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        depth: int,
        norm: str = "batch",
        dilation_rates: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        rates = list(dilation_rates) if dilation_rates is not None else [1] * (depth + 1)
        if len(rates) != depth + 1:
            raise ConfigError(
                f"model.dilation_rates={rates} has {len(rates)} entries but model.depth={depth} needs {depth + 1} "
                f"(one per level, shallow first): set e.g. model.dilation_rates={default_dilation_rates(depth)} "
                "or model.dilation_rates=null for the default schedule."
            )
        if any(int(rate) < 1 for rate in rates):
            raise ConfigError(f"model.dilation_rates={rates} must all be at least 1.")
        self.out_channels = [base_channels * 2**level for level in range(depth + 1)]
        channels_in = [in_channels, *self.out_channels[:-1]]
        self.levels = nn.ModuleList(
            DoubleConv(c_in, c_out, norm=norm, dilation=rate)
            for c_in, c_out, rate in zip(channels_in, self.out_channels, rates, strict=True)
        )
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, block in enumerate(self.levels):
            x = block(x if level == 0 else self.pool(x))
            features.append(x)
        return features


class Up(nn.Module):
    """Double the resolution and halve the channels: 2x2 transposed conv, or bilinear + 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, mode: str = "transpose") -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        elif mode == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        else:
            raise ConfigError(f"model.upsample={mode!r} is not known; choose one of {', '.join(UPSAMPLES)}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class UNet(nn.Module):
    """UNet for 2D segmentation (Ronneberger et al. 2015, arXiv:1505.04597) with composable parts.

    Args:
        in_channels: image channels.
        out_channels: logit channels (1 for a binary problem, K for K classes).
        base_channels: channels of the first level; level ``i`` has ``base_channels * 2**i``.
        depth: number of 2x downsamplings (the seed's network: 4, i.e. 64-128-256-512-1024).
        encoder: ``double_conv`` or ``dilated`` (cross-scale dilation rates per level).
        skip: ``concat``, ``attention`` (spatial attention), ``attention_gate`` (Oktay et al.) or ``dense``.
        deep_supervision: add 1x1 heads on the coarser decoder levels; in training mode ``forward``
            returns a list of logits, full resolution first. In eval mode it returns one tensor.
        norm: ``batch``, ``instance``, ``group`` or ``none``.
        upsample: ``transpose`` (2x2 transposed conv) or ``bilinear``.
        dropout: channel dropout after the bottleneck (0 disables it).
        dilation_rates: one rate per level for ``encoder=dilated``; default 1 ... 1, 3, 5.
        attention_kernel: kernel of the spatial attention convolution.
        dense_layers, dense_growth: DenseBlock size for ``skip=dense``.
        supervision_levels: number of decoder levels below full resolution that get a head.

    Inputs of any size work: the model pads them to a multiple of ``2**depth`` (reflection) and
    crops the logits back, so a 565x584 image gives 565x584 logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        depth: int = 4,
        encoder: str = "double_conv",
        skip: str = "concat",
        deep_supervision: bool = False,
        norm: str = "batch",
        upsample: str = "transpose",
        dropout: float = 0.0,
        dilation_rates: Sequence[int] | None = None,
        attention_kernel: int = 7,
        dense_layers: int = 4,
        dense_growth: int = 16,
        supervision_levels: int = 2,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"model.depth={depth} must be at least 1.")
        if base_channels < 1:
            raise ConfigError(f"model.base_channels={base_channels} must be positive.")
        if encoder not in ENCODERS:
            raise ConfigError(f"model.encoder={encoder!r} is not known; choose one of {', '.join(ENCODERS)}.")
        if encoder == "dilated" and dilation_rates is None:
            dilation_rates = default_dilation_rates(depth)
        if encoder == "double_conv":
            dilation_rates = None
        self.depth = depth
        self.deep_supervision = deep_supervision
        self.encoder = Encoder(in_channels, base_channels, depth, norm, dilation_rates)

        channels = self.encoder.out_channels  # shallow first
        self.ups = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.decoders = nn.ModuleList()
        # Decoder levels run deep to shallow: level depth-1, ..., 0.
        for level in reversed(range(depth)):
            coarse, fine = channels[level + 1], channels[level]
            skip_module = make_skip(
                skip,
                fine,
                gate_channels=coarse,
                norm=norm,
                attention_kernel=attention_kernel,
                dense_layers=dense_layers,
                dense_growth=dense_growth,
            )
            self.ups.append(Up(coarse, fine, upsample))
            self.skips.append(skip_module)
            self.decoders.append(DoubleConv(skip_module.out_channels + fine, fine, norm=norm))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(channels[0], out_channels, kernel_size=1)
        # Auxiliary heads on the decoder levels just above full resolution, finest first.
        n_aux = min(supervision_levels, depth - 1) if deep_supervision else 0
        if deep_supervision and n_aux < 1:
            raise ConfigError(
                f"model.deep_supervision=true needs a decoder level below full resolution and at least one head, "
                f"but model.depth={depth} and model.supervision_levels={supervision_levels}: use depth >= 2 and "
                "supervision_levels >= 1, or model.deep_supervision=false."
            )
        self.aux_heads = nn.ModuleList(nn.Conv2d(channels[level], out_channels, 1) for level in range(1, n_aux + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, 2**self.depth)

        features = self.encoder(x)
        y = self.dropout(features[-1])
        decoded = []  # decoder outputs, deep to shallow
        for up, skip, decoder, enc in zip(self.ups, self.skips, self.decoders, reversed(features[:-1]), strict=True):
            y = decoder(torch.cat([skip(enc, y), up(y)], dim=1))
            decoded.append(y)

        logits = self.head(y)[..., :height, :width]
        if not (self.training and self.aux_heads):
            return logits
        # decoded[-1] is full resolution, decoded[-1 - k] is 1/2**k of it.
        aux = [head(decoded[-1 - k]) for k, head in enumerate(self.aux_heads, start=1)]
        # Crop each auxiliary map to the unpadded extent at its own scale.
        aux = [a[..., : -(-height // 2**k), : -(-width // 2**k)] for k, a in enumerate(aux, start=1)]
        return [logits, *aux]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of ``x`` to a multiple of ``multiple`` (reflection where it fits).

    Reflection (without repeating the edge pixel) is used on both axes when the padding is shorter
    than the image on both; otherwise the edge pixels are repeated on both. The padding is a gather
    by index with no Python branch on the sizes, so ``torch.export`` (ONNX) and ``torch.jit.trace``
    keep it for every input size instead of freezing the pad amounts of the example input.
    """
    height, width = x.shape[-2], x.shape[-1]
    rows = torch.arange(height + (-height % multiple), device=x.device)
    cols = torch.arange(width + (-width % multiple), device=x.device)
    mirrored_rows, mirrored_cols = 2 * (height - 1) - rows, 2 * (width - 1) - cols
    fits = (mirrored_rows.min() >= 0) & (mirrored_cols.min() >= 0)
    rows = torch.where(rows < height, rows, torch.where(fits, mirrored_rows, height - 1))
    cols = torch.where(cols < width, cols, torch.where(fits, mirrored_cols, width - 1))
    return x.index_select(-2, rows).index_select(-1, cols)
