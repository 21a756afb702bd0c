"""Moved to :mod:`unet_train.data.volume_readers` (each format's opener to :mod:`unet_train.data.volume_formats`), as
the data modules read volumes too; every public name of both is importable from here as before."""

from unet_train.data.volume_formats import *  # noqa: F403
from unet_train.data.volume_readers import *  # noqa: F403
