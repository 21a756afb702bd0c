"""One UNet whose encoder, skip connections and deep supervision are chosen independently.

``UNet(encoder="dilated", skip="attention", deep_supervision=True)`` is as valid as the plain
network of Ronneberger et al. 2015 (``encoder="double_conv", skip="concat"``), and every option
builds in 2D or 3D (``spatial_dims``) with per-level, per-axis pooling (``pool_factors``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from unet_train.errors import ConfigError
from unet_train.models.blocks import LINEAR_MODES, DoubleConv, check_spatial_dims, layer
from unet_train.models.skips import make_skip

ENCODERS = ("double_conv", "dilated")
UPSAMPLES = ("transpose", "bilinear")  # bilinear is trilinear in 3D
MAX_TOTAL_POOLING = 256  # per axis, over all levels, for explicit pool_factors (2**depth where that is more)


def resolve_pool_factors(
    pool_factors: Sequence[Sequence[int]] | None, depth: int, spatial_dims: int
) -> list[tuple[int, ...]]:
    """One tuple of per-axis factors per pooling, shallow first; ``None`` pools 2 on every axis at every level."""
    if pool_factors is None:
        return [(2,) * spatial_dims] * depth
    try:
        levels = [] if isinstance(pool_factors, str) else [list(level) for level in pool_factors]
    except TypeError:
        levels = []
    if not levels and depth:
        raise ConfigError(
            f"model.pool_factors={pool_factors!r} is not a list of per-axis factors per pooling: give e.g. "
            f"{[[1, 2, 2]] + [[2, 2, 2]] * (depth - 1) if spatial_dims == 3 else [[2, 2]] * depth}, or null."
        )
    if len(levels) != depth:
        raise ConfigError(
            f"model.pool_factors has {len(levels)} entries but model.depth={depth} needs {depth} (one per pooling, "
            f"shallow first, each with {spatial_dims} per-axis factors), or model.pool_factors=null "
            + ("(derived from the voxel spacing for volumes)." if spatial_dims == 3 else "for 2 everywhere.")
        )
    for index, level in enumerate(levels):
        if len(level) != spatial_dims:
            raise ConfigError(
                f"model.pool_factors[{index}]={level} has {len(level)} factors but model.spatial_dims={spatial_dims} "
                f"needs {spatial_dims} (one per axis, {'z, y, x' if spatial_dims == 3 else 'y, x'})."
            )
        if any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in level):
            raise ConfigError(f"model.pool_factors[{index}]={level} must hold integers of at least 1.")
    # The model pads every input to the total pooling per axis: a file-borne config must not make that huge.
    limit = max(MAX_TOTAL_POOLING, 2**depth)
    for axis in range(spatial_dims):
        total = math.prod(int(level[axis]) for level in levels)
        if total > limit:
            raise ConfigError(
                f"model.pool_factors={levels} pools axis {axis} by {total} in all; at most {limit} (each input is "
                "padded to a multiple of it): use factors of 1 or 2."
            )
    return [tuple(int(f) for f in level) for level in levels]


def conv_kernel_sizes(pool_factors: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The convolution kernel of every level (``depth + 1``, shallow first), per axis: 3, or 1 on a coarse axis.

    The pool factors tell the model how anisotropic its data are. A plan pools an axis only once its
    voxels are within 2x of the finest axis's (nnU-Net's rule), so an axis that has not been pooled
    at this level or any shallower one while another axis has, is still at least 2x coarser: there
    the kernel is 1 (a 3x3x3 kernel on thick sections would mix planes that barely relate). Once the
    axis has been pooled, its voxels have caught up and its kernel is 3. The bottleneck follows all
    poolings. With the same factor on every axis every kernel is 3; ``[[1,2,2],[1,2,2],[2,2,2]]``
    gives ``(1,3,3), (1,3,3), (3,3,3), (3,3,3)``.
    """
    depth = len(pool_factors)
    dims = len(pool_factors[0]) if depth else 0
    kernels = []
    for level in range(depth + 1):
        pooled = [1] * dims  # the pooling through this level (the bottleneck: all of it)
        for factors in pool_factors[: min(level + 1, depth)]:
            pooled = [p * f for p, f in zip(pooled, factors, strict=True)]
        coarse = max(pooled, default=1) > 1
        kernels.append(tuple(1 if coarse and p == 1 else 3 for p in pooled))
    return kernels


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
    their channels. ``pool_factors`` (per pooling, per axis; default 2 everywhere) sets the max-pooling
    between levels and :func:`conv_kernel_sizes` the convolutions' kernels.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        depth: int,
        norm: str = "batch",
        dilation_rates: Sequence[int] | None = None,
        spatial_dims: int = 2,
        pool_factors: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        factors = resolve_pool_factors(pool_factors, depth, spatial_dims)
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
        kernels = conv_kernel_sizes(factors)
        self.levels = nn.ModuleList(
            DoubleConv(c_in, c_out, norm, rate, kernel, spatial_dims)
            for c_in, c_out, rate, kernel in zip(channels_in, self.out_channels, rates, kernels, strict=True)
        )
        # No parameters: a list of pools leaves the state dict as it was with one shared 2x2 pool.
        max_pool = layer("max_pool", spatial_dims)
        self.pools = nn.ModuleList(max_pool(f, stride=f) for f in factors)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.levels[0](x)]
        for pool, block in zip(self.pools, self.levels[1:], strict=True):
            features.append(block(pool(features[-1])))
        return features


class Up(nn.Module):
    """Undo one pooling (``factor`` per axis, 2x2 by default) and halve the channels.

    ``transpose``: a transposed conv with kernel and stride ``factor``; ``bilinear``: (bi/tri)linear
    resampling by ``factor`` and a 1x1 conv.
    """

    def __init__(
        self, in_channels: int, out_channels: int, mode: str = "transpose", factor: Sequence[int] = (2, 2)
    ) -> None:
        super().__init__()
        dims = len(factor)
        if mode == "transpose":
            transpose = layer("conv_transpose", dims)
            self.up: nn.Module = transpose(in_channels, out_channels, kernel_size=tuple(factor), stride=tuple(factor))
        elif mode == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=tuple(float(f) for f in factor), mode=LINEAR_MODES[dims], align_corners=False),
                layer("conv", dims)(in_channels, out_channels, kernel_size=1),
            )
        else:
            raise ConfigError(f"model.upsample={mode!r} is not known; choose one of {', '.join(UPSAMPLES)}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class UNet(nn.Module):
    """UNet for 2D and 3D segmentation (Ronneberger et al. 2015, arXiv:1505.04597) with composable parts.

    Args:
        in_channels: image channels.
        out_channels: logit channels (1 for a binary problem, K for K classes).
        base_channels: channels of the first level; level ``i`` has ``base_channels * 2**i``.
        depth: number of downsamplings (the seed's network: 4, i.e. 64-128-256-512-1024).
        encoder: ``double_conv`` or ``dilated`` (cross-scale dilation rates per level).
        skip: ``concat``, ``attention`` (spatial attention), ``attention_gate`` (Oktay et al.) or ``dense``.
        deep_supervision: add 1x1 heads on the coarser decoder levels; in training mode ``forward``
            returns a list of logits, full resolution first. In eval mode it returns one tensor.
        norm: ``batch``, ``instance``, ``group`` or ``none``.
        upsample: ``transpose`` (transposed conv) or ``bilinear`` (trilinear in 3D) + 1x1 conv.
        dropout: channel dropout after the bottleneck (0 disables it).
        dilation_rates: one rate per level for ``encoder=dilated``; default 1 ... 1, 3, 5.
        attention_kernel: kernel of the spatial attention convolution.
        dense_layers, dense_growth: DenseBlock size for ``skip=dense``.
        supervision_levels: number of decoder levels below full resolution that get a head.
        spatial_dims: 2 (inputs ``N, C, H, W``) or 3 (volumes ``N, C, D, H, W``).
        pool_factors: per pooling (``depth`` entries, shallow first), one factor per axis, e.g.
            ``[[1, 2, 2], [1, 2, 2], [2, 2, 2]]`` for sections 4x thicker than their pixels; ``None``
            pools 2 on every axis. Kernels follow (:func:`conv_kernel_sizes`): 1 on an axis that is
            still much coarser than the others, else 3.

    Inputs of any size work: the model pads them to a multiple of the total pooling per axis
    (``2**depth`` by default; reflection) and crops the logits back, so a 565x584 image gives
    565x584 logits and a 5x37x29 volume 5x37x29.
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
        spatial_dims: int = 2,
        pool_factors: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
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
        self.spatial_dims = spatial_dims
        self.pool_factors = resolve_pool_factors(pool_factors, depth, spatial_dims)
        # The pooling up to each level, per axis (level 0: none); the last one is the padding multiple.
        self.scales = [tuple([1] * spatial_dims)]
        for factors in self.pool_factors:
            self.scales.append(tuple(s * f for s, f in zip(self.scales[-1], factors, strict=True)))
        self.deep_supervision = deep_supervision
        self.encoder = Encoder(in_channels, base_channels, depth, norm, dilation_rates, spatial_dims, self.pool_factors)
        kernels = conv_kernel_sizes(self.pool_factors)

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
                kernel_size=kernels[level],
                factor=self.pool_factors[level],
            )
            self.ups.append(Up(coarse, fine, upsample, self.pool_factors[level]))
            self.skips.append(skip_module)
            self.decoders.append(
                DoubleConv(
                    skip_module.out_channels + fine, fine, norm, kernel_size=kernels[level], spatial_dims=spatial_dims
                )
            )
        self.dropout = layer("dropout", spatial_dims)(dropout) if dropout > 0 else nn.Identity()
        conv = layer("conv", spatial_dims)
        self.head = conv(channels[0], out_channels, kernel_size=1)
        # Auxiliary heads on the decoder levels just above full resolution, finest first.
        n_aux = min(supervision_levels, depth - 1) if deep_supervision else 0
        if deep_supervision and n_aux < 1:
            raise ConfigError(
                f"model.deep_supervision=true needs a decoder level below full resolution and at least one head, "
                f"but model.depth={depth} and model.supervision_levels={supervision_levels}: use depth >= 2 and "
                "supervision_levels >= 1, or model.deep_supervision=false."
            )
        self.aux_heads = nn.ModuleList(conv(channels[level], out_channels, 1) for level in range(1, n_aux + 1))

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """Per axis, the side multiple on which the model pads nothing (``2**depth`` on each by default)."""
        return self.scales[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.ndim != self.spatial_dims + 2:
            layout = "N, C, D, H, W" if self.spatial_dims == 3 else "N, C, H, W"
            raise ConfigError(
                f"model.spatial_dims={self.spatial_dims} takes ({layout}) inputs but got shape {tuple(x.shape)}: "
                "set model.spatial_dims to the data's dimensions."
            )
        size = x.shape[2:]
        x = pad_to_multiple(x, self.size_multiple)

        features = self.encoder(x)
        y = self.dropout(features[-1])
        decoded = []  # decoder outputs, deep to shallow
        for up, skip, decoder, enc in zip(self.ups, self.skips, self.decoders, reversed(features[:-1]), strict=True):
            y = decoder(torch.cat([skip(enc, y), up(y)], dim=1))
            decoded.append(y)

        logits = crop(self.head(y), size, self.scales[0])
        if not (self.training and self.aux_heads):
            return logits
        # decoded[-1] is full resolution, decoded[-1 - k] is pooled by scales[k] of it; each auxiliary
        # map is cropped to the unpadded extent at its own scale (ceil(size / scale) per axis).
        return [
            logits,
            *(crop(head(decoded[-1 - k]), size, self.scales[k]) for k, head in enumerate(self.aux_heads, 1)),
        ]


def crop(x: torch.Tensor, size: Sequence[int], scale: Sequence[int]) -> torch.Tensor:
    """``x`` cropped, from the start of each spatial axis, to ``ceil(size / scale)``."""
    spatial = tuple(slice(0, -(-s // f)) for s, f in zip(size, scale, strict=True))
    return x[(slice(None), slice(None), *spatial)]


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int]) -> torch.Tensor:
    """Pad the end of every spatial axis of ``x`` to a multiple of ``multiple`` (reflection where it fits).

    ``multiple`` is one number for all spatial axes (all but batch and channels) or one per axis.
    Reflection (without repeating the edge pixel) is used on every axis when the padding is shorter
    than the image on every axis; otherwise the edge pixels are repeated on all. The padding is a gather
    by index with no Python branch on the sizes, so ``torch.export`` (ONNX) and ``torch.jit.trace``
    keep it for every input size instead of freezing the pad amounts of the example input.
    """
    axes = range(2, x.ndim)
    multiples = [multiple] * len(axes) if isinstance(multiple, int) else list(multiple)
    indices, mirrored = [], []
    for axis, m in zip(axes, multiples, strict=True):
        length = x.shape[axis]
        index = torch.arange(length + (-length % m), device=x.device)
        indices.append(index)
        mirrored.append(2 * (length - 1) - index)
    fits = torch.stack([m.min() >= 0 for m in mirrored]).all()
    for axis, index, mirror in zip(axes, indices, mirrored, strict=True):
        length = x.shape[axis]
        x = x.index_select(axis, torch.where(index < length, index, torch.where(fits, mirror, length - 1)))
    return x
