"""Whether a label volume lies on its image's voxels: the spacing both state, and a NIfTI pair's affines."""

from __future__ import annotations

import logging
import math

import numpy as np

from unet_train.data.volume_readers import Volume
from unet_train.errors import DataError

log = logging.getLogger(__name__)


def check_pair_geometry(image: Volume, mask: Volume, warned: set[str]) -> None:
    """Refuse a label volume that states another voxel spacing than its image (on an axis both state), and warn
    once (``warned`` holds the masks already named) of NIfTI pairs whose affines differ otherwise (orientation,
    origin): voxels are paired as stored, as nnU-Net's dataset check refuses the first and warns of the second."""
    both = [axis for axis in "zyx" if axis in image.scale and axis in mask.scale]
    if not all(math.isclose(image.scale[a], mask.scale[a], rel_tol=1e-4) for a in both):
        sides = [[round(float(v.scale.get(a, 1.0)), 6) for a in "zyx"] for v in (mask, image)]
        raise DataError(
            f"{mask.name} states the voxel spacing {sides[0]} (z, y, x) but its image {image.name} states "
            f"{sides[1]}: its labels would not lie on the image's voxels; resample the mask onto its image (the "
            "same shape, spacing and orientation), or set data.spacing=[z,y,x] where a header is wrong."
        )
    affines = [getattr(v.array, "affine", None) for v in (image, mask)]
    if affines[0] is None or affines[1] is None or mask.name in warned:
        return
    if not np.allclose(affines[0], affines[1], rtol=1e-4, atol=1e-3):
        import nibabel  # read a NIfTI, so installed

        codes = ["".join(nibabel.aff2axcodes(affine)) for affine in affines]
        log.warning(
            "%s and its image %s have different NIfTI affines (orientation %s and %s, or their origins): their "
            "voxels are paired as stored, so check that the labels lie on the image, and resample the mask onto "
            "its image where they do not.", mask.name, image.name, codes[0], codes[1],
        )  # fmt: skip
        warned.add(mask.name)
