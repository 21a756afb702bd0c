"""scripts/bench/monai_sliding.py: MONAI's tile corners written out, and where two corner lists cover voxels apart."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from unet_train.inference.tiling import tile_starts

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "monai_sliding.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("monai_sliding", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_monai_steps_by_the_overlap_and_moves_the_last_tile_back_to_the_border(script):
    assert script.monai_starts(192, 64, 0.25) == [0, 48, 96, 128]  # 144 moved back to 192 - 64
    assert script.monai_starts(96, 64, 0.25) == [0, 32]
    assert script.monai_starts(64, 64, 0.5) == [0] and script.monai_starts(40, 64, 0.5) == [0]
    # unet-train spreads its tiles evenly: the same corners where the step divides the span, not at 192
    assert tile_starts(256, 64, 0.25, 8) == script.monai_starts(256, 64, 0.25) == [0, 48, 96, 144, 192]
    assert tile_starts(192, 64, 0.25, 8) == [0, 40, 88, 128]


def test_monai_starts_are_monais_own(script):
    pytest.importorskip("monai")  # not a dependency; checked where it is installed
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for shape, tile, overlap in (((64, 192, 192), 64, 0.25), ((96, 256, 200), 48, 0.5), ((30, 70, 64), 32, 0.3)):
        roi = (tile,) * 3
        slices = dense_patch_slices(shape, roi, _get_scan_interval(shape, roi, 3, (overlap,) * 3))
        for axis in range(3):
            assert sorted({s[axis].start for s in slices}) == script.monai_starts(shape[axis], tile, overlap)


def test_voxels_are_split_by_whether_the_same_tiles_cover_them(script):
    ours, theirs = [[0], [0, 40, 88, 128], [0, 40, 88, 128]], [[0], [0, 48, 96, 128], [0, 48, 96, 128]]
    diff = torch.zeros(1, 192, 192)
    diff[0, 100, 100] = 0.5  # covered by other tiles on both axes
    diff[0, 10, 170] = 3e-7  # by the same tiles (y < 40: the first alone; x >= 160: the last alone)
    found = script.where_corners_differ(diff, ours, theirs, (1, 64, 64), 1e-5)
    # y 40-159: ours adds the tile at 40 from y = 40, MONAI's at 96 still covers y = 159 (ours at 88 ends at 151)
    assert found["other_tiles_along"] == {"z": [], "y": [[40, 159]], "x": [[40, 159]]}
    assert found["share_covered_by_other_tiles"] == round(1 - (72 / 192) ** 2, 4)
    assert found["share_over_tol"] == 0.0  # 1 voxel of 36864
    assert found["max_where_same_tiles"] == pytest.approx(3e-7)


def test_a_shape_is_three_sides(script):
    assert script.parse_shape("64x192X192") == (64, 192, 192)
    with pytest.raises(argparse.ArgumentTypeError, match="'64x192': write a volume shape as DxHxW"):
        script.parse_shape("64x192")
