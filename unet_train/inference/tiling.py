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
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from unet_train.engine.runtime import channels_last_format, to_channels_last
from unet_train.errors import ConfigError
from unet_train.inference.budget import default_memory, forward_bytes_per_pixel, plan_tiles
from unet_train.inference.tta import predict_probabilities

log = logging.getLogger(__name__)


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
    1e-6 so that corners never underflow to zero.
    """

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (x / (sigma_scale * n)) ** 2)

    return torch.outer(axis(height), axis(width)).float().clamp_min_(1e-6)


def mirror_index(before: int, length: int, after: int) -> np.ndarray:
    """Indices into ``range(length)`` for a line padded by mirroring (without repeating the edge pixel)."""
    if length == 1:
        return np.zeros(before + 1 + after, dtype=np.int64)
    return np.pad(np.arange(length), (before, after), mode="reflect")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model with each BatchNorm2d that directly follows a Conv2d folded into it.

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
                isinstance(conv, nn.Conv2d)
                and isinstance(norm, nn.BatchNorm2d)
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
        tile_size: side of the square tiles; shrunk to the padded image where that is smaller.
            ``None`` chooses per image from ``memory`` (:func:`~unet_train.inference.budget.plan_tiles`):
            the whole image in one forward pass where it fits, else the largest tiles that fit.
        overlap: fraction of a tile shared with its neighbour (0 <= overlap < 1).
        batch_size: tiles per forward pass; with the tile size this bounds the memory. ``None``: as many
            as ``memory`` holds (with ``tile_size=None``), else 4.
        margin: pixels mirrored around the image, so border pixels get context; ``None`` uses
            half the overlap, rounded to the model's pooling grid (and none for an image predicted whole).
        tta: average over the 8 flips and rotations of each tile batch (8x the cost).
        device: where the model runs; tiles are gathered on the CPU and moved there batch by batch.
        channels_last: use the channels-last memory layout for model and tiles.
        autocast_dtype: mixed precision for the forward passes (None: float32).
        fold_bn: fold batch norms into the preceding convolutions (faster, same results).
        sigma_scale: Gaussian sigma as a fraction of the tile side.
        split_inputs: the input holds one model input after another along the channels (an
            ensemble of models normalised differently); model ``i`` gets the ``i``-th part.
        memory: bytes one forward pass may take when ``tile_size`` is ``None``; ``None``: a share of the
            device's free memory (:func:`~unet_train.inference.budget.default_memory`).
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        tile_size: int | None = 256,
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
    ) -> None:
        if (tile_size is not None and tile_size < 1) or not 0 <= overlap < 1 or (batch_size or 1) < 1:
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
        # of every model's size multiple on both axes (2**depth, or the product of its pool_factors).
        self.align = math.lcm(*(s for m in self.models for s in size_multiple(m)))
        self.overlap = overlap
        self.tta = tta
        self.autocast_dtype = autocast_dtype
        self.sigma_scale = sigma_scale
        self.split_inputs = split_inputs
        self._weights: dict[tuple[int, int], torch.Tensor] = {}
        self.memory: int | None = memory or None  # None: default_memory, read when first needed
        self.memory_source = "tile_memory" if memory else ""
        self._bytes_per_pixel: float | None = None
        self.auto = tile_size is None
        self.requested_margin = margin
        self.tile_size = 0 if tile_size is None else tile_size  # set per image by for_shape when auto
        self.batch_size = 4 if batch_size is None else batch_size
        self.margin = 0
        self.auto_batch = batch_size is None
        if tile_size is not None:
            self._set_tiles(tile_size, self.batch_size, margin)

    def _set_tiles(self, tile_size: int, batch_size: int, margin: int | None) -> None:
        if margin is None:
            margin = int(tile_size * self.overlap / 2) // self.align * self.align
        if not 0 <= int(margin) < tile_size:
            raise ConfigError(f"margin={margin} must be >= 0 and smaller than tile_size={tile_size} (null picks one).")
        self.tile_size, self.batch_size, self.margin = tile_size, batch_size, int(margin)

    def bytes_per_pixel(self) -> float:
        """What one forward pass holds per input pixel (measured once on a small probe, see budget.py)."""
        if self._bytes_per_pixel is None:
            side = max(64, 2 * self.align) // self.align * self.align
            channels = sum(in_channels(m) for m in self.models) if self.split_inputs else in_channels(self.model)
            probe = torch.rand(1, channels, side, side)
            self._bytes_per_pixel = forward_bytes_per_pixel(self.forward_tiles, probe)
        return self._bytes_per_pixel

    def for_shape(self, height: int, width: int, whole: bool = True) -> TiledPredictor:
        """This predictor with its tiles fixed for a ``height`` x ``width`` image: itself when ``tile_size`` was
        given, else a copy sharing the models whose tile is the whole image (padded to the model's size
        multiple, no margin) where one forward pass of it fits the memory budget, or the largest tile that fits.
        Without ``whole`` an image is always tiled (the chunked path reads windows, never a whole plane)."""
        if not self.auto:
            return self
        if self.memory is None:
            self.memory, self.memory_source = default_memory(self.device)
        m = self.requested_margin or 0
        plan = plan_tiles(
            height + 2 * m, width + 2 * m, self.bytes_per_pixel(), self.memory, self.align, self.memory_source, whole
        )
        fixed = copy.copy(self)
        fixed.auto = False
        margin = m if plan.whole else self.requested_margin
        fixed._set_tiles(plan.tile_size, plan.batch_size if self.auto_batch else self.batch_size, margin)
        return fixed

    def _prepare(self, model: nn.Module, fold_bn: bool) -> nn.Module:
        model = model.eval()
        if fold_bn:
            model = fold_batchnorm(model)
        model = model.to(self.device)
        return to_channels_last(model) if self.channels_last else model

    def _weight(self, height: int, width: int) -> torch.Tensor:
        # Computed once per tile shape and reused by every tile and image.
        key = (height, width)
        if key not in self._weights:
            self._weights[key] = gaussian_weights(height, width, self.sigma_scale)
        return self._weights[key]

    def grid(self, height: int, width: int) -> tuple[int, int, list[int], list[int]]:
        """Tile shape and start offsets (in mirrored-image coordinates) for an image of this size.

        Tiles that lie wholly in the mirrored margin (a margin close to the tile size) are left out: they
        would add nothing to the image, and the others still cover every pixel.
        """
        if self.auto:
            return self.for_shape(height, width).grid(height, width)
        m = self.margin
        padded_h, padded_w = height + 2 * m, width + 2 * m
        tile_h, tile_w = min(self.tile_size, padded_h), min(self.tile_size, padded_w)
        ys = [s for s in tile_starts(padded_h, tile_h, self.overlap, self.align) if -tile_h < s - m < height]
        xs = [s for s in tile_starts(padded_w, tile_w, self.overlap, self.align) if -tile_w < s - m < width]
        return tile_h, tile_w, ys, xs

    def num_tiles(self, height: int, width: int) -> int:
        _, _, ys, xs = self.grid(height, width)
        return len(ys) * len(xs)

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
                    prob = predict_probabilities(model, inputs, self.tta).float()
                total = prob if total is None else total.add_(prob)
            assert total is not None
            if len(self.models) > 1:
                total.div_(len(self.models))
        return total[:count].cpu()

    def predict(self, image: torch.Tensor, on_tiles: Callable[[int], None] | None = None) -> torch.Tensor:
        """Probabilities ``(K, H, W)`` float32 on the CPU for one image ``(C, H, W)``.

        ``on_tiles(n)`` is called after each batch of ``n`` tiles (for a progress bar).
        """
        if image.ndim != 3:
            raise ValueError(f"expected an image (C, H, W), got shape {tuple(image.shape)}")
        if self.auto:
            return self.for_shape(*image.shape[1:]).predict(image, on_tiles)
        image = image.float()
        channels, height, width = image.shape
        tile_h, tile_w, ys, xs = self.grid(height, width)
        m = self.margin
        if m == 0 and len(ys) == len(xs) == 1:  # the whole image in one pass: nothing to blend
            prob = self.forward_tiles(image[None])[0]
            if on_tiles is not None:
                on_tiles(1)
            return prob
        rows = torch.from_numpy(mirror_index(m, height, ys[-1] + tile_h - height - m))
        cols = torch.from_numpy(mirror_index(m, width, xs[-1] + tile_w - width - m))
        weight = self._weight(tile_h, tile_w)
        out: torch.Tensor | None = None  # (K, H, W), allocated once K is known
        weight_sum = torch.zeros(height, width)
        buffer = torch.empty(min(self.batch_size, len(ys) * len(xs)), channels, tile_h, tile_w)
        for starts in _batches([(y, x) for y in ys for x in xs], self.batch_size):
            for i, (y, x) in enumerate(starts):
                buffer[i] = _gather(image, rows, cols, m, y - m, x - m, tile_h, tile_w)
            prob = self.forward_tiles(buffer[: len(starts)])
            if out is None:
                out = torch.zeros(prob.shape[1], height, width)
            for i, (y, x) in enumerate(starts):
                # The part of the tile that lies on the image (mirrored margins are dropped).
                y0, y1 = max(y - m, 0), min(y - m + tile_h, height)
                x0, x1 = max(x - m, 0), min(x - m + tile_w, width)
                ty, tx = y0 - (y - m), x0 - (x - m)
                w = weight[ty : ty + y1 - y0, tx : tx + x1 - x0]
                out[:, y0:y1, x0:x1].addcmul_(prob[i, :, ty : ty + y1 - y0, tx : tx + x1 - x0], w)
                weight_sum[y0:y1, x0:x1].add_(w)
            if on_tiles is not None:
                on_tiles(len(starts))
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
    image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, margin: int, y: int, x: int, height: int, width: int
) -> torch.Tensor:
    """The ``(C, height, width)`` window at image coordinates ``(y, x)`` (negative inside the mirrored margin).

    ``rows``/``cols`` map mirrored coordinates (``-margin`` is index 0) to image coordinates.
    """
    _, full_h, full_w = image.shape
    if y >= 0 and x >= 0 and y + height <= full_h and x + width <= full_w:
        return image[:, y : y + height, x : x + width]  # inside the image: a view, no gather
    r = rows[y + margin : y + margin + height]
    c = cols[x + margin : x + margin + width]
    return image[:, r[:, None], c[None, :]]
