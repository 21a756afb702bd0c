"""ISBI 2012 EM segmentation challenge: 30 annotated 512x512 slices and 30 test slices.

Files in ``root``: ``train-volume.tif``, ``train-labels.tif``, ``test-volume.tif`` (30-page
uint8 TIFF stacks). Labels are 255 for cell interior and 0 for membrane; the positive class is
the membrane by default (``foreground: membrane``), as in the challenge.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from unet_train.data.base import Split
from unet_train.data.reading import read_stack
from unet_train.data.splits import check_disjoint, parse_indices
from unet_train.data.volume_data import VolumeCase, VolumeData
from unet_train.data.volume_readers import Volume
from unet_train.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")
TRAIN_SLICES, VAL_SLICES = "0-24", "25-29"  # the default split

# SHA-256 of the decoded pixels (C-order uint8, 30x512x512): independent of the TIFF encoding.
PIXEL_SHA256 = {
    "train-volume.tif": "200da3d452d726e6c9ca1ce04b869d4edb727320d23b516d01cce707dc8c4760",
    "train-labels.tif": "a7cb64000a1a7e542682927e19c91339f58f9f178e0bcce4e207371116f0ca36",
    "test-volume.tif": "1b58fa7ec1d0ff9d39a855622db3ff66a97863036339b0d04be51b2f5a99b0e9",
}

# Public copies of the original stacks, pinned to a commit; tried in order.
DEFAULT_URLS = (
    "https://raw.githubusercontent.com/zhixuhao/unet/b45af4d458437d8281cc218a07fd4380818ece4a/data/membrane/{name}",
    "https://raw.githubusercontent.com/alexklibisz/isbi-2012/238a567ae843f7c03e5cc5d3f233cd3f93f0da17/data/{name}",
)


def pixel_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's pixels as C-order uint8 bytes."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).hexdigest()


def download_isbi(root: str | Path, urls: Sequence[str] = DEFAULT_URLS, timeout: float = 60.0) -> None:
    """Fetch the missing ISBI stacks into ``root`` and verify their pixel SHA-256.

    A file is written to a temporary name, decoded and checked, and only then renamed into
    place: a corrupt or partial download never stays in ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = root / name
        if target.is_file():
            continue
        errors = []
        for template in urls:
            url = template.format(name=name)
            fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".part")
            tmp = Path(tmp_name)
            try:
                log.info("Downloading %s", url)
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                digest = pixel_sha256(tifffile.imread(tmp))
                if digest != PIXEL_SHA256[name]:
                    raise DataError(
                        f"checksum mismatch for {name} from {url}: pixel SHA-256 {digest}, "
                        f"expected {PIXEL_SHA256[name]}"
                    )
                os.replace(tmp, target)
                break
            except Exception as exc:  # try the next mirror; report every failure at the end
                errors.append(f"{url}: {exc}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise DataError(f"Could not download {name} into {root}:\n  " + "\n  ".join(errors))


class ISBI2012(VolumeData):
    """The ISBI 2012 stacks, split by slice index.

    Args:
        root: folder holding the three TIFF stacks.
        download: fetch missing stacks from ``urls`` and verify them.
        foreground: ``membrane`` (label 0 is the positive class) or ``cell`` (label 255).
        train_slices, val_slices: slice indices (``"0-24"`` or a list) of the annotated stack;
            unused when ``fold`` is set (k-fold over the 30 slices in order, see ``SegmentationData``).
        urls: download mirrors, each with ``{name}`` for the file name.
        **kwargs: loader and transform settings of :class:`SegmentationData`; with ``spatial_dims=3`` the
            training slices are one anisotropic volume (and the validation slices another), cropped in 3D
            (:class:`~unet_train.data.volume_data.VolumeData`: ``spacing``, ``volume_transform``); with
            ``context_slices`` > 0 (2.5D) each slice's neighbours in those volumes are its extra channels, and
            ``train_transform`` augments the stacked slices.
    """

    def __init__(
        self,
        root: str,
        download: bool = False,
        foreground: str = "membrane",
        train_slices: Sequence[int] | str = TRAIN_SLICES,
        val_slices: Sequence[int] | str = VAL_SLICES,
        urls: Sequence[str] = DEFAULT_URLS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if foreground not in ("membrane", "cell"):
            raise ConfigError(f"data.foreground={foreground!r} must be 'membrane' or 'cell'.")
        if self.num_classes != 2 or self.in_channels != 1:
            raise ConfigError("ISBI 2012 is binary and grey: use data.num_classes=2 and data.in_channels=1.")
        if self.fold is not None and (str(train_slices), str(val_slices)) != (TRAIN_SLICES, VAL_SLICES):
            raise ConfigError(
                f"data.fold={self.fold} chooses the slices itself, so data.train_slices={train_slices} and "
                f"data.val_slices={val_slices} would be ignored; set data.fold=null or leave the slices at "
                f"their defaults ({TRAIN_SLICES}, {VAL_SLICES})."
            )
        self.root = Path(root).expanduser()
        self.download = download
        self.foreground = foreground
        self.train_slices, self.val_slices = train_slices, val_slices
        self.urls = list(urls)

    def _read(self, name: str) -> np.ndarray:
        path = self.root / name
        if not path.is_file():
            if self.download:
                download_isbi(self.root, self.urls)
            else:
                raise DataError(
                    f"ISBI 2012 file {name} not found in {self.root.resolve()}. Put train-volume.tif, "
                    f"train-labels.tif and test-volume.tif there and set data.root=<that folder>, "
                    f"or add data.download=true to fetch and verify them."
                )
        stack = read_stack(path)  # in its own dtype (uint8 for the challenge's files)
        if stack.ndim != 3:
            raise DataError(f"{path} has shape {stack.shape}; expected a stack of 2D grey slices (N, H, W).")
        return stack

    def resolve_auto(self) -> None:
        self._in_channels = self._in_channels or 1
        self._num_classes = self._num_classes or 2

    def _slices(self, split: str, total: int) -> list[int]:
        """The slice indices of ``split`` (train or val); refused when the two share a slice."""
        train = parse_indices(self.train_slices, total, "data.train_slices")
        val = parse_indices(self.val_slices, total, "data.val_slices")
        check_disjoint(train, val, f"data.train_slices={self.train_slices} and data.val_slices={self.val_slices}")
        return train if split == "train" else val

    def load_cases(self, split: str) -> list[VolumeCase]:
        """The split's slices as one volume (the stack in memory: 30 x 512 x 512 bytes)."""
        spacing = self.spacing_override or (1.0, 1.0, 1.0)
        if split == "test":
            return [VolumeCase(Volume(self._read("test-volume.tif"), "zyx", "test-volume"), None, "test", spacing)]
        stored = self.load_split(split)
        numbers = [int(name.rsplit("-", 1)[1]) for name in stored.names]
        if self.context_slices and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise ConfigError(
                f"data.context_slices={self.context_slices} reads each slice's neighbours in its split, but the "
                f"{split} slices {numbers} are not consecutive; give data.{split}_slices as one range (e.g. 0-24)."
            )
        image = Volume(np.stack(stored.images), "zyx", f"train-volume.tif ({split} slices)")
        assert stored.masks is not None
        mask = Volume(np.stack(stored.masks), "zyx", f"train-labels.tif ({split} slices)")
        first, last = stored.names[0].removeprefix("train-"), stored.names[-1].removeprefix("train-")
        return [VolumeCase(image, mask, f"train-{first}-{last}", spacing)]

    def load_split(self, split: str) -> Split:
        if split == "test":
            volume = self._read("test-volume.tif")
            return Split(list(volume), None, [f"test-{i:02d}" for i in range(len(volume))])
        volume, labels = self._read("train-volume.tif"), self._read("train-labels.tif")
        if volume.shape != labels.shape:
            raise DataError(
                f"train-volume.tif is {volume.shape} but train-labels.tif is {labels.shape} in {self.root}."
            )
        positive = labels == 0 if self.foreground == "membrane" else labels > 0
        masks = positive.astype(np.uint8)
        indices = list(range(len(volume))) if split == "all" else self._slices(split, len(volume))
        return Split([volume[i] for i in indices], [masks[i] for i in indices], [f"train-{i:02d}" for i in indices])
