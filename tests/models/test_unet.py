"""UNet shapes, parameter count and composable parts."""

from __future__ import annotations

import pytest
import torch

from unet_train.errors import ConfigError
from unet_train.models import UNet


def seed_unet_parameters(base: int = 64, depth: int = 4, in_ch: int = 1, out_ch: int = 1) -> int:
    """Parameters of the seed's network, counted by hand: conv3x3 without bias + BN (2 per channel)."""
    total = 0
    widths = [base * 2**i for i in range(depth + 1)]
    c_in = in_ch
    for c in widths:  # encoder: two conv3x3-BN per level
        total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c
        c_in = c
    for level in reversed(range(depth)):
        coarse, fine = widths[level + 1], widths[level]
        total += 4 * coarse * fine + fine  # 2x2 transposed conv with bias
        total += 9 * 2 * fine * fine + 2 * fine + 9 * fine * fine + 2 * fine  # decoder double conv
    return total + widths[0] * out_ch + out_ch  # 1x1 head


def test_parameter_count_matches_the_seed_architecture():
    model = UNet(in_channels=1, out_channels=1, base_channels=64, depth=4)
    assert sum(p.numel() for p in model.parameters()) == seed_unet_parameters() == 31_036_481


@pytest.mark.parametrize("size", [(512, 512), (256, 256), (565, 584), (37, 45)])
def test_output_shape_equals_input_shape(size):
    model = UNet(base_channels=4, depth=4).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 1, *size))
    assert out.shape == (1, 1, *size)


def test_logits_not_probabilities_and_multiclass_channels():
    torch.manual_seed(0)  # unseeded, the random initial logits can all fall inside (0, 1)
    model = UNet(in_channels=3, out_channels=5, base_channels=4, depth=2).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 32, 32) * 10)
    assert out.shape == (2, 5, 32, 32)
    assert out.min() < 0 or out.max() > 1  # raw logits


def test_padding_does_not_leak_into_the_crop():
    """On a multiple of 2**depth nothing is padded; the result equals running the crop itself."""
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2, norm="instance").eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), model(x.clone()))
        odd = model(x[..., :30, :31])
    assert odd.shape == (1, 1, 30, 31)


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match="model.skip='nope'"):
        UNet(skip="nope")
    with pytest.raises(ConfigError, match="model.encoder='nope'"):
        UNet(encoder="nope")
    with pytest.raises(ConfigError, match=r"dilation_rates=\[1, 2\] has 2 entries but model.depth=4"):
        UNet(encoder="dilated", dilation_rates=[1, 2])
