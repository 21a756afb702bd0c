"""Tiles chosen from a memory budget: the whole image where it fits, tiles (in batches) otherwise, same results."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from unet_train.errors import ConfigError
from unet_train.inference import TiledPredictor
from unet_train.inference.budget import (
    MIB,
    OVERHEAD,
    TilePlan,
    forward_bytes_per_pixel,
    parse_memory,
    plan_tiles,
)

from .test_tiling import random_unet, smooth_image, whole_image


def pointwise_unet(depth: int = 2) -> nn.Module:
    """A tiny UNet whose 3x3 convolutions keep only their centre tap: each output pixel then depends only on
    the input pixels of its own 2**depth block (pooling and transposed convolutions stay within a block), so
    tiles aligned on the pooling grid give exactly the whole image's values, seams and borders included."""
    model = random_unet(depth)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
                centre = module.weight[:, :, 1, 1].clone()
                module.weight.zero_()
                module.weight[:, :, 1, 1] = centre
    return model


def test_plan_is_the_whole_image_padded_to_the_size_multiple_when_it_fits():
    # 540 x 800 padded to multiples of 32: 544 x 800 pixels at 100 bytes each.
    fits = 544 * 800 * 100
    assert plan_tiles((540, 800), 100.0, fits, (32, 32), "test") == TilePlan(True, (544, 800), 1)
    # One byte less: the largest square of multiples of 32 under 435,199 pixels is 640 (isqrt 659).
    assert plan_tiles((540, 800), 100.0, fits - 1, (32, 32), "test") == TilePlan(False, 640, 1)
    # The chunked path never takes the whole image.
    assert plan_tiles((540, 800), 100.0, fits, (32, 32), "test", whole=False) == TilePlan(False, 640, 1)


def test_plan_of_a_volume_is_whole_or_tiles_that_take_short_axes_whole():
    # 30 x 100 x 100 voxels, size multiples (2, 16, 16): padded to 30 x 112 x 112.
    fits = 30 * 112 * 112 * 50
    assert plan_tiles((30, 100, 100), 50.0, fits, (2, 16, 16), "test") == TilePlan(True, (30, 112, 112), 1)
    # Half that (188,160 voxels): z (30) is shorter than a cube's share (57) and is taken whole; the 6,272 voxels
    # a plane may hold go to y (79, on the grid 64) and then to x (98, on the grid 96).
    assert plan_tiles((30, 100, 100), 50.0, fits // 2, (2, 16, 16), "test") == TilePlan(False, (30, 64, 96), 1)
    # Below 30 x 64 x 64 nothing fits.
    with pytest.raises(ConfigError, match="less than one 30x64x64 tile"):
        plan_tiles((30, 100, 100), 1.0, 30 * 64 * 64 - 1, (2, 16, 16), "test")
    # 5 cubes of 64 (1,310,720 voxels): the cube root 109 on z's grid of 2 is 108; 12,136 voxels a plane give y
    # 110 -> 96 and x 126 -> 112 on the 16-voxel grid; one tile per forward pass.
    assert plan_tiles((300, 300, 300), 1.0, 5 * 64**3, (2, 16, 16), "test") == TilePlan(False, (108, 96, 112), 1)


def test_a_thin_volume_is_tiled_in_plane_only():
    """The ISBI validation volume (5 x 512 x 512, unpooled z): cubic 64^3 tiles were 59 mirrored planes in 64,
    and a budgeted validation took 4.5x a whole-plane forward."""
    plan = plan_tiles((5, 512, 512), 1.0, 508_000, (1, 16, 16), "test")
    assert plan == TilePlan(False, (5, 304, 320), 1)


def test_plan_batches_capped_tiles_on_a_large_budget():
    # 3.5 tiles of 1024^2 fit: three per forward pass, 1024 px a side (the cap).
    plan = plan_tiles((5000, 5000), 10.0, int(3.5 * 1024**2 * 10), (16, 16), "test")
    assert plan == TilePlan(False, 1024, 3)


def test_a_budget_below_the_smallest_tile_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        plan_tiles((500, 500), 1000.0, 2 * MIB, (16, 16), "tile_memory")
    assert str(err.value) == (
        "A forward pass may take 2 MiB (tile_memory): 2,097 pixels of this model (1000 bytes a pixel), "
        "less than one 64x64 tile; raise tile_memory to 4 or more, or set tile_size."
    )


@pytest.mark.parametrize("value", [0, -5, "big", True, float("nan")])
def test_tile_memory_must_be_a_positive_number(value):
    with pytest.raises(ConfigError, match=r"^tile_memory=.* must be a positive number of MiB \(e.g. 2048\), or null.$"):
        parse_memory(value)


def test_parse_memory_reads_mib():
    assert parse_memory(None) is None
    assert parse_memory(1.5) == 3 * 2**19


def test_forward_bytes_count_the_live_tensors_at_the_peak():
    # x*2 (256 bytes) is alive while +1 makes its result (256 bytes): a peak of 512, plus the 256-byte input.
    x = torch.rand(1, 1, 8, 8)
    assert forward_bytes_per_pixel(lambda t: t * 2 + 1, x) == pytest.approx(768 * OVERHEAD / 64)
    # t * 2 is freed once summed, before t * 3 is made: the peak holds one 256-byte temporary and two sums.
    assert forward_bytes_per_pixel(lambda t: (t * 2).sum() + (t * 3).sum(), x) == pytest.approx(
        (256 + 2 * 4 + 256) * OVERHEAD / 64
    )


def test_an_image_that_fits_is_predicted_whole_in_one_forward_pass():
    model = random_unet(depth=2)
    image = smooth_image(70, 90)  # not multiples of 4: the model pads (reflecting) to 72 x 92 itself
    predictor = TiledPredictor(model, tile_size=None, memory=1024 * MIB, fold_bn=False)
    calls: list[int] = []
    prob = predictor.predict(image, on_tiles=calls.append)
    assert calls == [1] and predictor.num_tiles(70, 90) == 1
    assert predictor.for_shape(70, 90).margin == 0  # padded only to the size multiple, no mirrored margin
    torch.testing.assert_close(prob, whole_image(model, image), atol=1e-6, rtol=0)


def test_whole_image_equals_tiled_output(monkeypatch):
    """The whole-image pass against explicit tiles and budget-chosen tiles (batched) of a model whose output
    pixels depend only on their pooling block: equal to 1e-5, borders and seams included."""
    model = pointwise_unet(depth=2)
    image = smooth_image(150, 170) + 0.1 * torch.rand(1, 150, 170, generator=torch.Generator().manual_seed(0))
    whole = TiledPredictor(model, tile_size=None, memory=1024 * MIB)
    expected = whole.predict(image)
    torch.testing.assert_close(expected, whole_image(model, image), atol=1e-5, rtol=0)
    explicit = TiledPredictor(model, tile_size=32, overlap=0.25, batch_size=3)
    assert explicit.num_tiles(150, 170) > 30
    torch.testing.assert_close(explicit.predict(image), expected, atol=1e-5, rtol=0)
    # A budget of 10,240 pixels: the largest square tile on the 4-pixel grid under it (100), one per pass.
    per_pixel = whole.bytes_per_pixel()
    budgeted = TiledPredictor(model, tile_size=None, memory=int(10240.5 * per_pixel), batch_size=None)
    fixed = budgeted.for_shape(150, 170)
    assert (fixed.tile_size, fixed.batch_size, fixed.margin) == (100, 1, 12)
    assert budgeted.num_tiles(150, 170) == fixed.num_tiles(150, 170) > 4
    torch.testing.assert_close(budgeted.predict(image), expected, atol=1e-5, rtol=0)
    # Tiles capped at 32 px a side: the same budget holds 10 of them per forward pass.
    monkeypatch.setattr("unet_train.inference.budget.MAX_AUTO_TILE", 32)
    fixed = budgeted.for_shape(150, 170)
    assert (fixed.tile_size, fixed.batch_size) == (32, 10)
    torch.testing.assert_close(budgeted.predict(image), expected, atol=1e-5, rtol=0)


def test_an_explicit_tile_size_wins_over_the_budget():
    model = random_unet(depth=2)
    predictor = TiledPredictor(model, tile_size=32, memory=1024 * MIB)
    assert predictor.for_shape(150, 170) is predictor
    assert (predictor.tile_size, predictor.batch_size) == (32, 4)
    assert predictor.num_tiles(150, 170) > 1


def test_a_too_small_budget_names_the_fix():
    predictor = TiledPredictor(random_unet(depth=2), tile_size=None, memory=4096)
    with pytest.raises(ConfigError, match=r"^A forward pass may take 0.00391 MiB \(tile_memory\): .* set tile_size.$"):
        predictor.predict(smooth_image(70, 90))


def test_measuring_a_forward_does_not_import_dynamo():
    """Entering a TorchDispatchMode imported torch._dynamo (4-9 s on 2 cores) at each run's first validation."""
    code = (
        "import sys, torch\n"
        "from unet_train.inference.budget import forward_bytes_per_pixel\n"
        "forward_bytes_per_pixel(torch.nn.Conv2d(1, 2, 3), torch.rand(1, 1, 16, 16))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_volume_probe_gives_bytes_per_voxel_whatever_its_depth():
    """A 3D probe's peak was divided by its y*x columns, not its voxels: a 16-plane probe made each voxel 16 times
    dearer, and a 5 x 512 x 512 validation volume that fits was cut into tiles (4x its whole-volume time)."""
    net = nn.Conv3d(1, 4, 1).eval()
    with torch.inference_mode():
        thin = forward_bytes_per_pixel(net, torch.rand(1, 1, 2, 16, 16))
        deep = forward_bytes_per_pixel(net, torch.rand(1, 1, 16, 16, 16))
    # float32 input (4 B) and 4-channel output (16 B) per voxel, with the allowance for what the count misses
    assert thin == pytest.approx(20 * OVERHEAD) and deep == pytest.approx(20 * OVERHEAD)
