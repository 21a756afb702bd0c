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


class TrainingDiverged(UserError, FloatingPointError):
    """The loss stayed NaN/inf for too many consecutive steps; the last good checkpoint is kept."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after ``last.pt`` was saved; exit with ``exit_code`` (128 + signal)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OutputError(UserError):
    """An output that cannot be written safely: a link out of its folder, a full or read-only disk, a locked run."""


def user_message(exc: UserError) -> str:
    """The one line of ``exc``: a DataLoader worker's error comes back re-raised with the worker's traceback in its
    message (``Caught DataError in DataLoader worker process 0. Original Traceback ...``), whose last line is
    ``module.Class: the message``; that message, without the traceback."""
    text = str(exc)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last
