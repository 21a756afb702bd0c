"""Tiled inference and TTA: equal to whole-image inference where they should be, seamless, any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unet_train.errors import ConfigError
from unet_train.inference import TiledPredictor, TTALogits, gaussian_weights, predict_probabilities, tile_starts
from unet_train.inference.tiling import fold_batchnorm, mirror_index
from unet_train.models import UNet


def random_unet(depth: int = 2, out_channels: int = 1) -> UNet:
    """A tiny UNet in eval mode with non-trivial batch-norm statistics and logits of spread ~1."""
    torch.manual_seed(0)
    model = UNet(1, out_channels, base_channels=4, depth=depth).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    with torch.no_grad():
        logits = model(smooth_image(128, 128)[None])
        model.head.weight /= logits.std()
        model.head.bias.copy_((model.head.bias - logits.mean()) / logits.std())
    return model


def smooth_image(height: int, width: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    return (0.5 + 0.25 * torch.sin(yy / 7) + 0.25 * torch.cos(xx / 5))[None]


def whole_image(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.sigmoid(model(image[None]))[0]


def test_tile_starts_cover_the_line_on_the_pooling_grid():
    assert tile_starts(50, 64, 0.25) == [0]
    assert tile_starts(128, 64, 0.5) == [0, 32, 64]
    assert tile_starts(128, 64, 0.0) == [0, 64]
    # 2112 = 2048 + 2 * 32 margin; stride 192 -> 11 tiles, the last one ends at 1856 + 256 = 2112.
    starts = tile_starts(2112, 256, 0.25, align=16)
    assert len(starts) == 11 and starts[0] == 0 and starts[-1] == 1856
    assert all(s % 16 == 0 for s in starts) and max(np.diff(starts)) <= 192
    # Not a multiple of the grid: the last tile runs past the end by less than align.
    assert tile_starts(100, 64, 0.5, align=16) == [0, 32, 48]


def test_gaussian_weights_peak_in_the_centre_and_never_vanish():
    w = gaussian_weights(64, 32)
    assert w.shape == (64, 32) and w.dtype == torch.float32
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))
    assert w.max() <= 1 and w[31:33, 15:17].min() > 0.99
    assert w.min() >= 1e-6
    assert mirror_index(2, 4, 3).tolist() == [2, 1, 0, 1, 2, 3, 2, 1, 0]


def test_one_tile_equals_the_whole_image_forward():
    model = random_unet()
    image = smooth_image(64, 48)
    # No margin: the single 64x48 tile is exactly the model's input; blending divides w*p by w.
    tiled = TiledPredictor(model, tile_size=64, overlap=0.25, margin=0, fold_bn=False).predict(image)
    assert tiled.shape == (1, 64, 48)
    torch.testing.assert_close(tiled, whole_image(model, image), atol=1e-5, rtol=0)
    # With a mirrored margin the tile is the reflect-padded image; the model pads bottom/right itself.
    tiler = TiledPredictor(model, tile_size=256, overlap=0.25, margin=8, fold_bn=False)
    padded = torch.from_numpy(np.pad(image.numpy(), ((0, 0), (8, 8), (8, 8)), mode="reflect"))
    expected = whole_image(model, padded)[:, 8:-8, 8:-8]
    torch.testing.assert_close(tiler.predict(image), expected, atol=1e-5, rtol=0)


def test_folded_batchnorm_gives_the_same_probabilities():
    model = random_unet()
    image = smooth_image(64, 64)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    torch.testing.assert_close(whole_image(folded, image), whole_image(model, image), atol=1e-5, rtol=0)


def test_overlapping_tiles_leave_no_seam():
    # A depth-2 UNet sees ~30 px of context; 64-px tiles overlapping by 32 px blend away the tile edges.
    model = random_unet()
    image = smooth_image(128, 128)
    whole = whole_image(model, image)
    assert whole.max() - whole.min() > 0.9  # the map varies over the whole range
    blended = TiledPredictor(model, tile_size=64, overlap=0.5, margin=0).predict(image)
    assert (blended - whole).abs().max() < 0.01
    # The check can fail: tiles that only touch (overlap 0, starts 0 and 64) show a seam at column 64.
    touching = TiledPredictor(model, tile_size=64, overlap=0.0, margin=0).predict(image)
    assert (touching - whole).abs().max() > 0.1


@pytest.mark.parametrize("shape", [(100, 77), (5, 3), (1, 1), (300, 17)])
def test_any_image_size_works(shape):
    model = random_unet()
    image = torch.rand(1, *shape)
    tiler = TiledPredictor(model, tile_size=64, overlap=0.25, batch_size=3)
    seen = []
    prob = tiler.predict(image, on_tiles=seen.append)
    assert prob.shape == (1, *shape) and torch.isfinite(prob).all()
    assert prob.min() >= 0 and prob.max() <= 1
    assert sum(seen) == tiler.num_tiles(*shape)


def test_multiclass_probabilities_sum_to_one():
    model = random_unet(out_channels=3)
    prob = TiledPredictor(model, tile_size=32, overlap=0.25).predict(torch.rand(1, 70, 45))
    assert prob.shape == (3, 70, 45)
    torch.testing.assert_close(prob.sum(0), torch.ones(70, 45), atol=1e-5, rtol=0)


def test_tta_averages_the_eight_flips_and_rotations():
    model = random_unet()
    image = torch.rand(1, 1, 32, 48)
    with torch.inference_mode():
        manual = torch.zeros(1, 1, 32, 48)
        for flip in (False, True):
            for k in range(4):
                x = image.flip(-1) if flip else image
                p = torch.sigmoid(model(x.rot90(k, (-2, -1)))).rot90(-k, (-2, -1))
                manual += p.flip(-1) if flip else p
        manual /= 8
        tta = predict_probabilities(model, image, tta=True)
        torch.testing.assert_close(tta, manual, atol=1e-6, rtol=0)
        assert (tta - predict_probabilities(model, image)).abs().max() > 1e-3  # TTA changed something
        torch.testing.assert_close(torch.sigmoid(TTALogits(model)(image)), manual, atol=1e-5, rtol=0)


def test_bad_tiling_settings_get_clear_messages():
    model = random_unet()
    with pytest.raises(ConfigError, match="margin=64 must be >= 0 and smaller than tile_size=64"):
        TiledPredictor(model, tile_size=64, margin=64)
    with pytest.raises(
        ConfigError, match=r"margin=-1 must be >= 0 and smaller than tile_size=64 \(null picks one\)\.$"
    ):
        TiledPredictor(model, tile_size=64, margin=-1)
    with pytest.raises(ConfigError, match="need tile_size >= 1, 0 <= overlap < 1 and batch_size >= 1"):
        TiledPredictor(model, tile_size=64, overlap=1.0)


class PixelwiseModel(nn.Module):
    """A 1x1 convolution that claims a pooling depth: tiling it must give exactly the whole-image result."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(3.0)
            self.conv.bias.fill_(-1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize(("depth", "tile"), [(2, 16), (3, 24), (4, 32)])
def test_every_margin_below_the_tile_covers_every_image_size(depth, tile):
    """Issue 24, item 9: margins close to the tile size (tiles wholly in the mirrored margin) on many sizes."""
    model = PixelwiseModel(depth)
    rng = np.random.default_rng(depth)
    image = torch.from_numpy(rng.random((1, 3 * tile + 5, 3 * tile + 5)).astype(np.float32))
    sizes = [1, 2, 3, tile // 2 - 1, tile - 1, tile, tile + 1, 2 * tile - 3, 2 * tile + 7, 3 * tile + 5]
    for margin in sorted({0, 1, tile // 2, tile - 3, tile - 2, tile - 1}):
        for overlap in (0.0, 0.25, 0.5):
            tiler = TiledPredictor(model, tile_size=tile, overlap=overlap, margin=margin, fold_bn=False)
            for height in sizes:
                width = sizes[(sizes.index(height) * 3 + margin) % len(sizes)]
                crop = image[:, :height, :width]
                got = tiler.predict(crop)
                _, _, ys, xs = tiler.grid(height, width)
                assert all(y - margin < height and y - margin + tile > 0 for y in ys), (margin, height, ys)
                assert all(x - margin < width and x - margin + tile > 0 for x in xs), (margin, width, xs)
                torch.testing.assert_close(got, whole_image(model, crop), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("depth", "tile", "margin", "shapes"), [(2, 64, 62, [(61, 20)]), (4, 256, 250, [(290, 24), (305, 24), (325, 24)])]
)
def test_reported_margins_close_to_the_tile_size_predict(depth, tile, margin, shapes):
    """The reported crashes (``The size of tensor a (0) ...``) on a real UNet; tiled equals the chunked blend."""
    from .test_chunked import chunked

    torch.manual_seed(0)
    model = UNet(1, 1, base_channels=2, depth=depth).eval()
    tiler = TiledPredictor(model, tile_size=tile, overlap=0.25, margin=margin, fold_bn=False)
    for height, width in shapes:
        image = smooth_image(height, width)
        prob = tiler.predict(image)
        assert prob.shape == (1, height, width) and torch.isfinite(prob).all()
        torch.testing.assert_close(chunked(tiler, image, chunk=32)[0], prob, atol=1e-6, rtol=0)


def test_3d_tiles_blend_back_to_the_whole_volume():
    """A pointwise model tiled over a volume (many overlapping, mirrored tiles) gives its whole-volume output; a
    UNet in one tile without margin gives its own forward."""
    torch.manual_seed(0)
    volume = torch.rand(1, 11, 37, 29)
    pointwise = torch.nn.Conv3d(1, 2, 1).eval()
    predictor = TiledPredictor(pointwise, tile_size=[4, 16, 16], overlap=0.5, batch_size=3, channels_last=False)
    assert predictor.num_tiles(11, 37, 29) > 20
    whole = torch.softmax(pointwise(volume[None]), 1)[0]
    assert torch.allclose(predictor.predict(volume), whole.detach(), atol=1e-6)
    unet = UNet(in_channels=1, out_channels=1, base_channels=4, depth=2, spatial_dims=3,
                pool_factors=[[1, 2, 2], [2, 2, 2]]).eval()  # fmt: skip
    one_tile = TiledPredictor(unet, tile_size=[12, 40, 32], margin=0, channels_last=False, fold_bn=False)
    assert one_tile.axes(3)[1] == [2, 4, 4]  # the grid follows the pooling: z is pooled once
    with torch.no_grad():
        expected = torch.sigmoid(unet(volume[None]))[0]
    assert torch.allclose(one_tile.predict(volume), expected, atol=1e-6)
