"""Moved to :mod:`unet_train.data.volume_readers`, as the data modules read volumes too; importable from here as
before (every public name, the modules it imports included: tests patch ``importlib`` through this one)."""

from unet_train.data.volume_readers import *  # noqa: F403
