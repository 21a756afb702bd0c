"""Pooling factors per axis from the voxel spacing, for anisotropic volumes (thick sections, thick-slice MR).

The rule (nnU-Net's, restated): at each pooling, an axis is pooled (factor 2) only while its current voxel side
is at most twice the finest current side, and only while the patch keeps at least ``min_size`` voxels along it
after the pooling. A thick axis is thus left alone until pooling the others has made the voxels comparable.
"""

from __future__ import annotations

from collections.abc import Sequence


def pool_factors_for_spacing(
    spacing: Sequence[float], patch: Sequence[int], depth: int, min_size: int = 4
) -> tuple[list[list[int]], list[str]]:
    """``depth`` per-axis pooling factors (shallow first) and, per axis not pooled at a level, the reason."""
    current, size = [float(s) for s in spacing], [int(p) for p in patch]
    factors: list[list[int]] = []
    reasons: list[str] = []
    for level in range(depth):
        finest = min(current)
        level_factors = []
        for axis, name in enumerate("zyx"[3 - len(current) :]):
            if current[axis] > 2 * finest:
                level_factors.append(1)
                reasons.append(f"{name} at pooling {level}: voxel side {current[axis]:g} > 2x the finest {finest:g}")
            elif size[axis] // 2 < min_size:
                level_factors.append(1)
                reasons.append(f"{name} at pooling {level}: the patch would keep {size[axis] // 2} < {min_size} voxels")
            else:
                level_factors.append(2)
        for axis, factor in enumerate(level_factors):
            current[axis] *= factor
            size[axis] //= factor
        factors.append(level_factors)
    return factors, reasons
