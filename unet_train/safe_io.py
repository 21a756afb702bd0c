"""Every file the tool writes goes through here: inside its intended folder, atomically, never through a link.

A run folder, a data folder's ``unet_plan/`` or an output folder may be shared with other people, so any
entry in it may be a symbolic link planted to make the tool overwrite a file elsewhere (``~/.bashrc``).
:func:`write_atomic` resolves the target inside its ``root`` folder and refuses a link that leads out of
it, then writes a temporary file created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` in the target's folder
(opened with ``O_NOFOLLOW``, so the folder cannot be swapped for a link after the check), fsyncs it and
renames it over the target. The rename replaces a name, never writes into an existing file, so a reader
sees the old file or the new one, never half of one, and a hard link to a foreign file is not written
through either. Disk full, too large and read-only folders become one :class:`OutputError` line.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from unet_train.errors import OutputError

# Why a write failed, and what the user can do: errno -> (reason, fix).
_FAILURES = {
    errno.ENOSPC: ("no space left on the device", "free space there or write the outputs to another disk"),
    errno.EDQUOT: ("the disk quota is exhausted", "free space there or write the outputs to another disk"),
    errno.EFBIG: ("the file is too large for its file system", "write the outputs to another file system"),
    errno.EROFS: ("the file system is read-only", "write the outputs to a writable folder"),
    errno.EACCES: ("permission denied", "make the folder writable or write the outputs elsewhere"),
    errno.EPERM: ("permission denied", "make the folder writable or write the outputs elsewhere"),
    errno.ELOOP: ("a symbolic link is in the way", "remove the link"),
}


def output_error(path: Path, exc: OSError) -> OutputError | None:
    """One line for an OSError the user can fix (disk full, read-only, no permission), else None."""
    reason = _FAILURES.get(exc.errno or 0)
    if reason is None:
        return None
    return OutputError(f"Could not write {path}: {reason[0]} (in {path.parent}); {reason[1]}.")


def _os_error_in(exc: BaseException) -> OSError | None:
    """``exc`` if it is an OSError, else the first OSError it was raised from or while handling."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))  # lexical: '..' removed, links not followed


def confined(path: str | Path, root: str | Path) -> Path:
    """The real path of ``path``, which must lie in ``root``: a link on the way that leads out of ``root`` is refused.

    ``root`` itself is the user's choice and may be (or lie under) a link. A link inside ``root`` that
    stays inside it is followed, so the returned path has no link below ``root``.
    """
    path, root = _absolute(Path(path)), _absolute(Path(root))
    real_root = root.resolve()
    if path.is_relative_to(root):
        parts = path.relative_to(root).parts
    elif path.is_relative_to(real_root):
        parts = path.relative_to(real_root).parts  # given through the real root already
    else:  # '..' in a name read from a file, say
        raise OutputError(f"{path} lies outside {real_root}, where unet-train writes; rename the file it comes from.")
    current = real_root
    for part in parts:
        step = current / part
        if step.is_symlink():
            real = step.resolve()
            if not real.is_relative_to(real_root):
                raise OutputError(
                    f"{step} is a symbolic link to {real}, outside {real_root}: unet-train does not write through "
                    "it; remove the link (or write the outputs to another folder)."
                )
            current = real
        else:
            current = step
    return current


def make_folder(folder: str | Path, root: str | Path) -> Path:
    """Create ``folder`` (inside ``root``) and its missing parents; returns its real path.

    A file where a folder should be, a link out of ``root`` or a folder that cannot be created is one line.
    """
    real = confined(folder, root)
    for step in (*reversed(real.parents), real):
        if step.exists() and not step.is_dir():
            raise OutputError(f"{step} is a file, not a folder: move it away, or write the outputs to another folder.")
    try:
        real.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(real, exc) or exc from None
    return real


def write_atomic(
    path: str | Path, content: bytes | str | Callable[[BinaryIO], object], root: str | Path | None = None
) -> Path:
    """Write ``content`` to ``path`` atomically, never through a link out of ``root`` (default: its folder).

    ``content``: bytes, text (UTF-8), or a function that writes to the open binary file (``torch.save``).
    Returns the real path written. On any failure the previous file at ``path`` is left as it was.
    """
    path = _absolute(Path(path))
    target = confined(path, path.parent if root is None else root)
    folder = make_folder(target.parent, path.parent if root is None else root)
    tmp = f".{target.name}.{secrets.token_hex(4)}.tmp"  # a name no one can have prepared
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise output_error(target, exc) or exc from None
    try:
        # O_EXCL + O_NOFOLLOW: a fresh file of our own, even if someone raced a link into this name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                if callable(content):
                    content(handle)
                else:
                    handle.write(content.encode() if isinstance(content, str) else content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)  # make the rename itself durable
    except Exception as exc:  # torch.save reports a full disk as a RuntimeError raised while handling the OSError
        cause = _os_error_in(exc)
        error = output_error(target, cause) if cause is not None else None
        if error is None:
            raise
        raise error from None
    finally:
        os.close(dir_fd)
    return target


def write_png(path: str | Path, image: np.ndarray, root: str | Path | None = None) -> Path:
    """An 8-bit grey or RGB array as a PNG, through :func:`write_atomic`."""
    return write_atomic(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"), root)


def write_csv(
    path: str | Path, header: Sequence[str], rows: Iterable[Mapping[str, Any]], root: str | Path | None = None
) -> Path:
    """Rows as a CSV table with ``header`` (a missing or None cell is empty), through :func:`write_atomic`."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(header))
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in header})
    return write_atomic(path, table.getvalue(), root)


def check_outputs(root: str | Path, names: Iterable[str]) -> None:
    """Refuse, before any work, outputs ``root/<name>`` that are links leading out of ``root``."""
    for name in names:
        confined(Path(root) / name, root)


def cleared(path: str | Path, root: str | Path | None = None) -> Path:
    """``path`` checked (:func:`confined`) and its old entry removed, for a library that writes to a path itself.

    Removing the name first means the library creates a fresh file instead of writing into whatever a
    planted link or hard link at that name leads to.
    """
    path = _absolute(Path(path))
    confined(path, path.parent if root is None else root)
    make_folder(path.parent, path.parent if root is None else root)
    try:
        path.unlink(missing_ok=True)
    except IsADirectoryError:
        raise OutputError(f"{path} is a folder; move it away, or write the outputs to another folder.") from None
    except OSError as exc:
        raise output_error(path, exc) or exc from None
    return path


class RunLogHandler(logging.FileHandler):
    """The job's log file (``train.log``; Hydra's ``job_logging`` file handler), opened without following a link.

    The file is opened at the first record, with ``O_NOFOLLOW``; when it cannot be opened (a planted link,
    a read-only folder) the run goes on without it, and the command's own checks refuse in one line
    instead of a traceback from logging's set-up.
    """

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = True) -> None:
        super().__init__(filename, mode, encoding, delay=True)  # opened by the first record, never here
        self.unusable = False

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)  # the handler owns it

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None and not self.unusable:
            try:
                self.stream = self._open()
            except OSError:
                self.unusable = True
        if not self.unusable:
            super().emit(record)


class RunFolderCheck(Callback):
    """Hydra callback: a run or sweep folder that cannot be made is one line and exit 2, before Hydra's own
    attempt ends in its traceback (a file where a folder should be, a place the user may not write)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        folder = _absolute(Path(str(OmegaConf.select(config, key))))
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            return
        reason = "is a file, not a folder" if not existing.is_dir() else "cannot be written to"
        sys.stderr.write(
            f"Cannot make the run folder {folder}: {existing} {reason}. Run from a folder you can write to, or set "
            "paths.output_dir=<a folder of yours>.\n"
        )
        sys.exit(2)
