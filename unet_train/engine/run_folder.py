"""A run folder that cannot be turned against its user: checked for links before a run writes, and locked.

Every file a run writes goes through :mod:`unet_train.safe_io`; :func:`check_run_folder` refuses a planted
link among the run's outputs before anything is trained, so a refusal costs no training time.

A run folder is trained in by one process at a time: a POSIX record lock (``fcntl.lockf``) on ``<run>/.lock``.
Two resumes of one run folder would both write ``last.pt``/``best.pt`` and one would lose the other's
best model. The lock is taken before anything is written into the folder and held until the process
ends; the operating system drops it when the process dies, even by SIGKILL, so a stale lock file never
blocks a later resume. A record lock belongs to the process, not to its open file: DataLoader workers
forked from the run do not inherit it (an ``flock`` would live on in an orphaned worker for seconds after
a SIGKILL and refuse the resume that follows). The file names its holder (pid, host, start time) for the
refusal message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from unet_train.config import HYDRA_RECORD
from unet_train.errors import OutputError
from unet_train.safe_io import check_outputs, make_folder, output_error

LOCK_FILE = ".lock"
# What a training run writes in its folder (train.log: Hydra's job log; .hydra: Hydra's record of the job).
RUN_OUTPUTS = (
    "resolved_config.yaml", "resume_log.yaml", "metrics.json", "tensorboard", "checkpoints", "checkpoints/last.pt",
    "checkpoints/best.pt", LOCK_FILE, "train.log", ".hydra", *(f".hydra/{name}" for name in HYDRA_RECORD),
)  # fmt: skip


def check_run_folder(run_dir: str | Path) -> None:
    """Refuse, before anything is written, a run folder whose outputs are links that lead out of it.

    ``train.log`` is opened by :class:`~unet_train.safe_io.RunLogHandler`, which does not follow a link,
    so not even this refusal is written through one.
    """
    check_outputs(run_dir, RUN_OUTPUTS)


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the ``with`` block (yields the lock file), or refuse in one line.

    Nothing else in the process may open the lock file while it is held: closing any descriptor of a file
    drops the process's record locks on it.
    """
    path = make_folder(run_dir, run_dir) / LOCK_FILE
    try:
        # O_NOFOLLOW: a planted link is refused, not followed; the holder line is written only into a
        # regular file of one link (truncating a hard link would empty a file elsewhere).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise output_error(path, exc) or exc from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise OutputError(f"{path} is not a plain file of its own (a hard link?); remove it and run again.")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise output_error(path, exc) or exc from None
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise OutputError(
                f"The run folder {Path(run_dir)} is in use by {holder}: one process trains in a run folder at a "
                "time; wait for it to end (or stop it), then resume."
            ) from None
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
