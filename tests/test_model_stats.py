"""scripts/model_stats.py counts what a hand count of the seed's UNet gives."""

from __future__ import annotations

import importlib.util

from .conftest import REPO

spec = importlib.util.spec_from_file_location("model_stats", REPO / "scripts" / "model_stats.py")
model_stats = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_stats)


def vanilla_gflops(size: int, base: int = 64, depth: int = 4) -> float:
    """Convolution FLOPs (2 per multiply-add) of the plain UNet at 1 x 1 x size x size, by hand."""
    widths = [base * 2**level for level in range(depth + 1)]
    area = [(size // 2**level) ** 2 for level in range(depth + 1)]
    flops = 0
    c_in = 1
    for level, c in enumerate(widths):  # encoder: two 3x3 convolutions per level
        flops += 2 * 9 * (c_in * c + c * c) * area[level]
        c_in = c
    for level in range(depth):  # decoder: 2x2 stride-2 transposed conv, then two 3x3 convs on the concat
        coarse, fine = widths[level + 1], widths[level]
        flops += 2 * 4 * coarse * fine * area[level + 1]
        flops += 2 * 9 * (2 * fine * fine + fine * fine) * area[level]
    flops += 2 * widths[0] * area[0]  # 1x1 head
    return flops / 1e9


def test_vanilla_parameters_and_flops_match_the_hand_count():
    parameters, gflops = model_stats.model_stats("vanilla", size=512)
    assert parameters == 31_036_481
    assert abs(gflops - vanilla_gflops(512)) < 1e-6


def test_variants_cost_what_their_extra_blocks_add():
    names = model_stats.model_names()
    assert {"vanilla", "attention", "dilated", "dense"} <= set(names)
    stats = {name: model_stats.model_stats(name, size=64) for name in ("vanilla", "dilated", "dense")}
    assert stats["dilated"][0] == stats["vanilla"][0]  # dilation adds no weights
    assert stats["dense"][0] > stats["vanilla"][0] and stats["dense"][1] > stats["vanilla"][1]
