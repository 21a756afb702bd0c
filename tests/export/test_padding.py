"""The UNet's branch-free pad-to-a-multiple equals F.pad's reflect/replicate padding it replaced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unet_train.models.unet import pad_to_multiple


def reference_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """The former implementation: reflect when the padding fits on both axes, else replicate."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def test_pad_to_multiple_equals_reflect_or_replicate_padding():
    torch.manual_seed(0)
    for height in (1, 2, 3, 7, 15, 16, 17, 30, 33):
        for width in (1, 5, 8, 14, 16, 19, 31, 32):
            x = torch.randn(2, 3, height, width)
            expected = reference_pad(x, 16)
            got = pad_to_multiple(x, 16)
            assert got.shape == expected.shape
            assert torch.equal(got, expected), (height, width)


def test_mirrored_pixels_come_from_inside_the_image():
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 8, 5)
    # width 5 -> 8: reflection without repeating the edge appends columns 3, 2, 1
    assert pad_to_multiple(x, 8)[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]
