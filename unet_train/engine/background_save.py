"""Checkpoint writes off the training thread, and the cadence of ``last.pt`` (``trainer.save_every``).

A background write first copies every tensor of the checkpoint to host memory (the training
thread goes on changing the weights in place), then a thread serialises, fsyncs and renames it
with :func:`~unet_train.engine.checkpoint.save_atomic`, so the kill-safety of a synchronous write
holds: a kill at any point leaves the previous file or the new one. At most one write is in flight;
the next write, the end of a run and a stop signal wait for it.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unet_train.engine.checkpoint import save_atomic
from unet_train.errors import ConfigError


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to host memory (a snapshot the training thread cannot change)."""
    if isinstance(obj, torch.Tensor):
        # One copy per tensor; from a GPU non_blocking into pinned memory, synchronised once in snapshot().
        if obj.device.type == "cpu":
            return obj.detach().clone()
        return obj.detach().to("cpu", non_blocking=obj.device.type == "cuda")
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [host_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(host_copy(v) for v in obj)
    return obj


def snapshot(obj: Any) -> Any:
    """:func:`host_copy`, complete on return (waits for device-to-host copies)."""
    copied = host_copy(obj)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # the non_blocking copies above have landed
    return copied


class BackgroundWriter:
    """Writes checkpoints with :func:`save_atomic` in a thread, one at a time.

    :meth:`submit` waits for the write before it, snapshots the object and returns; :meth:`wait`
    blocks until the write in flight (if any) is on disk and re-raises its error.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.write_s = 0.0  # the longest write the thread has done (the snapshot excluded)

    def submit(self, obj: Any, path: Path, root: Path | None = None) -> None:
        self.wait()
        copied = snapshot(obj)
        self._thread = threading.Thread(target=self._write, args=(copied, path, root), name="checkpoint-writer")
        self._thread.start()

    def _write(self, obj: Any, path: Path, root: Path | None) -> None:
        try:
            started = time.monotonic()
            save_atomic(obj, path, root)
            self.write_s = max(self.write_s, time.monotonic() - started)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


@dataclass(frozen=True)
class SaveEvery:
    """``trainer.save_every``: write ``last.pt`` every ``epochs`` epochs, or once ``seconds`` have passed."""

    epochs: int | None = 1
    seconds: float | None = None

    @classmethod
    def parse(cls, value: Any) -> SaveEvery:
        """``2`` or ``"2"``: every 2 epochs; ``"300s"``: after the first epoch that ends 300 s after the last write."""
        text = str(value).strip()
        match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*s", text)
        if match and float(match.group(1)) > 0:
            return cls(epochs=None, seconds=float(match.group(1)))
        if text.isdigit() and int(text) >= 1:
            return cls(epochs=int(text))
        raise ConfigError(
            f"trainer.save_every={value!r} must be a number of epochs (1, 2, ...) or of seconds with an s "
            '(e.g. "300s").'
        )

    def due(self, epoch: int, since_last_write: float) -> bool:
        """Whether ``last.pt`` is written after epoch ``epoch`` (1-based), ``since_last_write`` s after the last."""
        if self.seconds is not None:
            return since_last_write >= self.seconds
        assert self.epochs is not None
        return epoch % self.epochs == 0
