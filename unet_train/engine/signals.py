"""Stop training cleanly on SIGINT (Ctrl-C) and SIGTERM (``kill``, schedulers, container stops).

The first signal only sets a flag (and says so on stderr at once): the loop finishes the optimizer
step it is in, saves ``last.pt`` and stops. A second Ctrl-C aborts at once (KeyboardInterrupt, which
the console scripts end in one line with exit status 130), for a user who does not want to wait.
DataLoader workers ignore both signals: a Ctrl-C reaches the whole process group, and a worker dying
on it would make the main process fail on its next batch instead of saving; the main process shuts
the workers down itself.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from unet_train.errors import RunInterrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager that turns SIGINT/SIGTERM into a stop request, read through :attr:`signal`.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag: a handler runs between two bytecodes of the main thread, which may
        # be inside a logging call or a tensor write; acting here could corrupt either.
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum)
        # Say at once that the signal was heard: the step (or validation) in progress may take a while.
        # os.write takes no lock, unlike logging or print, which the interrupted code may be inside.
        again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        os.write(2, f"\n{self.signal.name}: stopping after this step, saving last.pt{again}.\n".encode())

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader workers: leave SIGINT/SIGTERM to the main process."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def stop_workers(loader: Any) -> None:
    """Shut down ``loader``'s worker processes now (persistent workers live in its iterator until it is freed).

    Workers that ignore SIGTERM (:func:`ignore_stop_signals`) must be told to stop while the loader's queues are
    alive: an iterator freed later by the cycle collector finds its queues' feeder threads finalized, its stop
    message never reaches the workers, the SIGTERM that follows is ignored, and the interpreter's exit then waits
    for them forever (``unet-train`` finished its run but never exited).
    """
    iterator = getattr(loader, "_iterator", None)  # torch keeps a persistent-worker iterator here (private)
    if iterator is None:
        return
    loader._iterator = None
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def interrupted(signum: int | None, checkpoint: Path, step: int, saved: bool) -> RunInterrupted:
    """The error that ends a run stopped by ``signum``: where it stopped and the command that resumes it."""
    sig = signal.Signals(signum or signal.SIGINT)
    if not saved:
        return RunInterrupted(f"Stopped by {sig.name} at step {step}; last.pt was not updated.", 128 + sig)
    command = "unet-train " + shlex.quote(f"ckpt={checkpoint.resolve()}")
    message = f"Stopped by {sig.name} after step {step}; saved {checkpoint}. Resume with: {command}"
    return RunInterrupted(message, 128 + sig)
