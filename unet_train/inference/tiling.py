"""Sliding-window inference: overlapping tiles, Gaussian blending, mirror padding at the borders.

This is the overlap-tile strategy of the UNet paper (Ronneberger et al. 2015): the image is
mirrored at its borders so that border pixels see context, cut into overlapping tiles that run
through the model in batches, and the tiles' probabilities are blended with a Gaussian weight
that trusts a tile's centre more than its edges (the edges lack context).

Memory is bounded by the tile batch: the output and the weight sum are preallocated float32
arrays of the image's size, tiles are gathered one batch at a time (mirroring by index, so no
padded copy of the image is made), and each tile's centre-weighted probabilities are added in
place.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from unet_train.engine.runtime import channels_last_format, to_channels_last
from unet_train.errors import ConfigError
from unet_train.inference.budget import default_memory, forward_bytes_per_pixel, plan_tiles
from unet_train.inference.tta import predict_probabilities


def tile_starts(length: int, tile: int, overlap: float, align: int = 1) -> list[int]:
    """Start offsets of tiles covering ``[0, length)`` with at least ``overlap`` (a fraction) between neighbours.

    Starts are multiples of ``align``, so every tile meets the model's pooling grid in the same phase
    and the last tile may run past ``length`` by less than ``align`` (the caller mirrors there).
    """
    if length <= tile:
        return [0]
    stride = max(align, int(tile * (1.0 - overlap)) // align * align)
    last = math.ceil((length - tile) / align) * align
    count = math.ceil(last / stride) + 1
    # Spread the tiles evenly between 0 and the last start instead of leaving a thin last step.
    return [round(i * last / (count - 1) / align) * align for i in range(count)]


def gaussian_weights(height: int, width: int, sigma_scale: float = 0.125) -> torch.Tensor:
    """A ``(height, width)`` Gaussian blending weight, 1 at the centre, sigma = ``sigma_scale`` x side.

    The same shape as MONAI's ``gaussian`` importance map with its default ``sigma_scale``; floored at
    1e-6 so that corners never underflow to zero. MONAI floors its map at 1e-3 instead, which in 3D flattens
    about 58 % of a cubic tile's voxels (all beyond 3.7 sigma of the centre) to one weight, so its blend
    differs from this one there (docs/performance.md, 3D).
    """
    return gaussian_weights_nd((height, width), sigma_scale)


def gaussian_weights_nd(shape: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """:func:`gaussian_weights` of any number of axes (a ``(depth, height, width)`` tile of a volume)."""

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (x / (sigma_scale * n)) ** 2)

    weight = axis(shape[0])
    for n in shape[1:]:  # an outer product, axis by axis (in 2D exactly torch.outer's products)
        weight = weight[..., None] * axis(n)
    return weight.float().clamp_min_(1e-6)


def mirror_index(before: int, length: int, after: int) -> np.ndarray:
    """Indices into ``range(length)`` for a line padded by mirroring (without repeating the edge pixel)."""
    if length == 1:
        return np.zeros(before + 1 + after, dtype=np.int64)
    return np.pad(np.arange(length), (before, after), mode="reflect")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model with each BatchNorm that directly follows a convolution (2D or 3D) folded into it.

    Saves one pass over each activation per layer at inference; the results agree with the model's
    to float rounding. Only ``nn.Sequential`` pairs are folded (the UNet's ConvNormAct blocks).
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = module._modules[first], module._modules[second]
            if (
                (
                    (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d))
                    or (isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d))
                )
                and norm.track_running_stats
                and norm.running_mean is not None
            ):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return model


class TiledPredictor:
    """Predict class probabilities of a whole image tile by tile.

    Args:
        model: a model returning logits, or several (an ensemble, e.g. the folds of a
            cross-validation) whose probabilities are averaged; put into eval mode (folded copies
            when ``fold_bn``).
        tile_size: side of the square (cubic) tiles, or one side per axis (``[z, y, x]`` for a volume); shrunk
            to the padded image where that is smaller.
        overlap: fraction of a tile shared with its neighbour (0 <= overlap < 1).
        batch_size: tiles per forward pass; with the tile size this bounds the memory.
        margin: pixels mirrored around the image, so border pixels get context; ``None`` uses
            half the overlap, rounded to the model's pooling grid.
        tta: average over the 8 flips and rotations of each tile batch (8x the cost).
        device: where the model runs; tiles are gathered on the CPU and moved there batch by batch.
        channels_last: use the channels-last memory layout for model and tiles.
        autocast_dtype: mixed precision for the forward passes (None: float32).
        fold_bn: fold batch norms into the preceding convolutions (faster, same results).
        sigma_scale: Gaussian sigma as a fraction of the tile side.
        split_inputs: the input holds one model input after another along the channels (an
            ensemble of models normalised differently); model ``i`` gets the ``i``-th part.
        classes: the leading class channels of the models' outputs (None: all); the channels after them are
            a target's own maps, each through a sigmoid (see :mod:`unet_train.objects.heads`).
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        tile_size: int | Sequence[int] | None = 256,
        overlap: float = 0.25,
        batch_size: int | None = 4,
        margin: int | None = None,
        tta: bool = False,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
        autocast_dtype: torch.dtype | None = None,
        fold_bn: bool = True,
        sigma_scale: float = 0.125,
        split_inputs: bool = False,
        memory: int | None = None,
        classes: int | None = None,
    ) -> None:
        sides = [256] if tile_size is None else [tile_size] if isinstance(tile_size, int) else list(tile_size)
        if min(sides) < 1 or not 0 <= overlap < 1 or (batch_size or 1) < 1:
            raise ConfigError(
                f"tile_size={tile_size}, overlap={overlap}, batch_size={batch_size}: need tile_size >= 1, "
                "0 <= overlap < 1 and batch_size >= 1."
            )
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.models = [self._prepare(m, fold_bn) for m in ([model] if isinstance(model, nn.Module) else model)]
        if not self.models:
            raise ConfigError("TiledPredictor needs at least one model.")
        self.model = self.models[0]
        # Tile starts on the pooling grid keep every tile's features aligned with the whole image's: a multiple
        # of every model's size multiple on both axes of an image (2**depth, or the product of its pool_factors).
        self.align = math.lcm(*(s for m in self.models for s in size_multiple(m)))
        self.overlap = overlap
        # tile_size=None: chosen per input by for_shape from the memory budget (the whole input where it fits).
        self.auto, self.auto_batch, self.requested_margin = tile_size is None, batch_size is None, margin
        self.memory: int | None = memory or None  # None: default_memory, read when first needed
        self.memory_source = "tile_memory" if memory else ""
        self._bytes_per_pixel: dict[int, float] = {}
        self._set_tiles(256 if tile_size is None else tile_size, 4 if batch_size is None else batch_size, margin)
        self.tta = tta
        self.autocast_dtype = autocast_dtype
        self.sigma_scale = sigma_scale
        self.split_inputs = split_inputs
        self.classes = classes
        self._weights: dict[tuple[int, ...], torch.Tensor] = {}

    def _set_tiles(self, tile_size: int | Sequence[int], batch_size: int, margin: int | None) -> None:
        sides = [tile_size] if isinstance(tile_size, int) else list(tile_size)
        self.tile_size = tile_size if isinstance(tile_size, int) else tuple(int(s) for s in tile_size)
        self.batch_size = batch_size
        self._margin = margin  # per axis for volumes (see axes)
        if margin is None:
            margin = int(min(sides) * self.overlap / 2) // self.align * self.align
        if not 0 <= int(margin) < min(sides):
            raise ConfigError(f"margin={margin} must be >= 0 and smaller than tile_size={tile_size} (null picks one).")
        self.margin = int(margin)

    def bytes_per_pixel(self, dims: int = 2) -> float:
        """What one forward pass holds per input pixel (voxel), measured once on a small probe (budget.py)."""
        if dims not in self._bytes_per_pixel:
            sides = [max(64 if dims == 2 else 16, 2 * a) // a * a for a in self.aligns(dims)]
            channels = sum(in_channels(m) for m in self.models) if self.split_inputs else in_channels(self.model)
            probe = torch.rand(1, channels, *sides)
            self._bytes_per_pixel[dims] = forward_bytes_per_pixel(self.forward_tiles, probe)
        return self._bytes_per_pixel[dims]

    def for_shape(self, *shape: int, whole: bool = True) -> TiledPredictor:
        """This predictor with its tiles fixed for an input of spatial ``shape``: itself when ``tile_size`` was
        given, else a copy sharing the models whose tile is the whole input (padded to the model's size
        multiple, no margin) where one forward pass of it fits the memory budget, or the largest tiles that fit.
        Without ``whole`` an input is always tiled (the chunked path reads windows, never a whole plane)."""
        if not self.auto:
            return self
        if self.memory is None:
            self.memory, self.memory_source = default_memory(self.device)
        m = self.requested_margin or 0
        padded = [n + 2 * m for n in shape]
        per_pixel = self.bytes_per_pixel(len(shape))
        plan = plan_tiles(padded, per_pixel, self.memory, self.aligns(len(shape)), self.memory_source, whole)
        fixed = copy.copy(self)
        fixed.auto = False
        margin = m if plan.whole else self.requested_margin
        fixed._set_tiles(plan.tile_size, plan.batch_size if self.auto_batch else self.batch_size, margin)
        return fixed

    def aligns(self, dims: int) -> list[int]:
        """The pooling grid per axis of a ``dims``-D input (tile starts and sides are multiples of it)."""
        if dims == 2:
            return [self.align] * 2
        aligns = [1] * dims
        for model in self.models:
            factors = getattr(model, "pool_factors", None) or [[2] * dims] * int(getattr(model, "depth", 0))
            aligns = [max(a, math.prod(f[i] for f in factors)) for i, a in enumerate(aligns)]
        return aligns

    def _prepare(self, model: nn.Module, fold_bn: bool) -> nn.Module:
        model = model.eval()
        if fold_bn:
            model = fold_batchnorm(model)
        model = model.to(self.device)
        return to_channels_last(model) if self.channels_last else model

    def _weight(self, shape: tuple[int, ...]) -> torch.Tensor:
        # Computed once per tile shape and reused by every tile and image.
        if shape not in self._weights:
            self._weights[shape] = gaussian_weights_nd(shape, self.sigma_scale)
        return self._weights[shape]

    def axes(self, dims: int) -> tuple[list[int], list[int], list[int]]:
        """Tile side, pooling grid and mirrored margin per axis of a ``dims``-D input.

        Images keep one grid and margin on both axes. A volume's grid on each axis is the product of the
        model's pooling factors along it (an anisotropic model pools z less), and its margin half the overlap of
        that axis's tile, on that grid (or ``margin`` on every axis where given)."""
        sides = [self.tile_size] * dims if isinstance(self.tile_size, int) else list(self.tile_size)
        if len(sides) != dims:
            raise ConfigError(f"tile_size={list(sides)} has {len(sides)} sides; the model's inputs have {dims} axes.")
        aligns = self.aligns(dims)
        if dims == 2:
            return sides, aligns, [self.margin] * 2
        if self._margin is None:
            margins = [int(s * self.overlap / 2) // a * a for s, a in zip(sides, aligns)]
        else:
            margins = [int(self._margin)] * dims
        return sides, aligns, margins

    def grid_nd(self, shape: Sequence[int]) -> tuple[tuple[int, ...], list[list[int]]]:
        """Tile shape and start offsets per axis (in mirrored coordinates) for an input of spatial ``shape``.

        Tiles that lie wholly in the mirrored margin (a margin close to the tile size) are left out: they
        would add nothing to the image, and the others still cover every pixel.
        """
        if self.auto:
            return self.for_shape(*shape).grid_nd(shape)
        tiles, starts = [], []
        for length, side, align, m in zip(shape, *self.axes(len(shape))):
            tile = min(side, length + 2 * m)
            tiles.append(tile)
            starts.append([s for s in tile_starts(length + 2 * m, tile, self.overlap, align) if -tile < s - m < length])
        return tuple(tiles), starts

    def grid(self, height: int, width: int) -> tuple[int, int, list[int], list[int]]:
        """:meth:`grid_nd` of an image: ``tile_h, tile_w, ys, xs``."""
        (tile_h, tile_w), (ys, xs) = self.grid_nd((height, width))
        return tile_h, tile_w, ys, xs

    def num_tiles(self, *shape: int) -> int:
        return math.prod(len(s) for s in self.grid_nd(shape)[1])

    def forward_tiles(self, batch: torch.Tensor, pad: bool = False) -> torch.Tensor:
        """Probabilities ``(N, K, h, w)`` float32 on the CPU of a batch of tiles ``(N, C, h, w)``.

        With ``pad``, a batch smaller than ``batch_size`` is padded to it (with copies of its last tile), so every
        forward pass has the same shape: a tile's probabilities then do not depend on which tiles
        share its batch (kernel choices can depend on the batch size), and chunked, resumed and
        multi-process predictions agree bit for bit. The ensemble's probabilities are averaged.
        """
        count = batch.shape[0]
        if pad and count < self.batch_size:
            batch = torch.cat([batch, batch[-1:].expand(self.batch_size - count, *batch.shape[1:])])
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=channels_last_format(batch.dim()))
        total: torch.Tensor | None = None
        parts = batch.chunk(len(self.models), dim=1) if self.split_inputs else [batch] * len(self.models)
        with torch.inference_mode():
            for model, inputs in zip(self.models, parts):
                precision = (
                    torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None
                    else contextlib.nullcontext()
                )
                with precision:
                    prob = predict_probabilities(model, inputs, self.tta, self.classes).float()
                total = prob if total is None else total.add_(prob)
            assert total is not None
            if len(self.models) > 1:
                total.div_(len(self.models))
        return total[:count].cpu()

    def predict(self, image: torch.Tensor, on_tiles: Callable[[int], None] | None = None) -> torch.Tensor:
        """Probabilities ``(K, H, W)`` float32 on the CPU for one image ``(C, H, W)``; ``(K, D, H, W)`` for a
        volume ``(C, D, H, W)`` (tiled on all three axes).

        ``on_tiles(n)`` is called after each batch of ``n`` tiles (for a progress bar).
        """
        if image.ndim not in (3, 4):
            raise ValueError(f"expected an image (C, H, W) or a volume (C, D, H, W), got shape {tuple(image.shape)}")
        if self.auto:
            return self.for_shape(*image.shape[1:]).predict(image, on_tiles)
        image = image.float()
        channels, *shape = image.shape
        tiles, starts = self.grid_nd(shape)
        margins = self.axes(len(shape))[2]
        if not any(margins) and all(len(s) == 1 for s in starts):  # the whole input in one pass: nothing to blend
            prob = self.forward_tiles(image[None])[0]
            if on_tiles is not None:
                on_tiles(1)
            return prob
        lookup = [
            torch.from_numpy(mirror_index(m, n, s[-1] + t - n - m)) for m, n, s, t in zip(margins, shape, starts, tiles)
        ]
        weight = self._weight(tiles)
        out: torch.Tensor | None = None  # (K, *shape), allocated once K is known
        weight_sum = torch.zeros(shape)
        corners = list(itertools.product(*starts))
        buffer = torch.empty(min(self.batch_size, len(corners)), channels, *tiles)
        for batch in _batches(corners, self.batch_size):
            for i, corner in enumerate(batch):
                buffer[i] = _gather(image, lookup, margins, [s - m for s, m in zip(corner, margins)], tiles)
            prob = self.forward_tiles(buffer[: len(batch)])
            if out is None:
                out = torch.zeros(prob.shape[1], *shape)
            for i, corner in enumerate(batch):
                # The part of the tile that lies on the image (mirrored margins are dropped).
                on_image, in_tile = [], []
                for s, m, t, n in zip(corner, margins, tiles, shape):
                    lo, hi = max(s - m, 0), min(s - m + t, n)
                    on_image.append(slice(lo, hi))
                    in_tile.append(slice(lo - (s - m), lo - (s - m) + hi - lo))
                w = weight[tuple(in_tile)]
                region: tuple[Any, ...] = (slice(None), *on_image)
                source: tuple[Any, ...] = (i, slice(None), *in_tile)
                out[region].addcmul_(prob[source], w)
                weight_sum[tuple(on_image)].add_(w)
            if on_tiles is not None:
                on_tiles(len(batch))
        assert out is not None
        return out.div_(weight_sum)


def size_multiple(model: nn.Module) -> tuple[int, ...]:
    """The side multiple on which ``model`` pads nothing: its ``size_multiple``, else ``2**depth``."""
    multiple = getattr(model, "size_multiple", None)
    if multiple is not None:
        return tuple(int(s) for s in multiple)
    return (2 ** int(getattr(model, "depth", 0)),)


def in_channels(model: nn.Module) -> int:
    """The input channels of ``model``: those of its first convolution."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            return int(module.in_channels)
    raise ConfigError(f"{type(model).__name__} has no convolution to read its input channels from.")


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _gather(
    image: torch.Tensor,
    lookup: Sequence[torch.Tensor],
    margins: Sequence[int],
    corner: Sequence[int],
    size: Sequence[int],
) -> torch.Tensor:
    """The ``(C, *size)`` window at image coordinates ``corner`` (negative inside the mirrored margin).

    ``lookup`` maps each axis's mirrored coordinates (``-margin`` is index 0) to image coordinates.
    """
    if all(c >= 0 and c + s <= n for c, s, n in zip(corner, size, image.shape[1:])):
        return image[(slice(None), *(slice(c, c + s) for c, s in zip(corner, size)))]  # inside: a view, no gather
    index = [table[c + m : c + m + s] for table, c, m, s in zip(lookup, corner, margins, size)]
    grid: tuple[Any, ...] = (slice(None), *torch.meshgrid(*index, indexing="ij"))
    return image[grid]
