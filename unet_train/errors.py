"""Errors a user can cause and fix: the CLIs print their message in one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, file, checkpoint); the message says how to fix it."""


class ConfigError(UserError):
    """A config value that cannot work."""


class DataError(UserError):
    """A missing, unreadable or inconsistent data file."""


class CheckpointError(UserError):
    """A file that is not a usable unet-train checkpoint."""
