"""What the console scripts share: logging of user errors, usage for missing keys, the run folder, resume overrides."""

from __future__ import annotations

import functools
import logging
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from unet_train.errors import RunInterrupted, UserError, user_message

log = logging.getLogger("unet_train")
F = TypeVar("F", bound=Callable[..., Any])

# Every mandatory key (``???`` in configs/): what it is and an example value. A command called without
# one prints what it needs and an example command, and exits 2. A new ``???`` key gets an entry here
# (tests/test_cli.py checks that every ``???`` in configs/ has one).
MANDATORY: dict[str, tuple[str, str]] = {
    "ckpt": ("a checkpoint written by unet-train", "outputs/2026-12-01/10-00-00/checkpoints/best.pt"),
    "input": ("an image, a multi-page TIFF stack or a folder of images", "stack.tif"),
    "data.root": ("your data folder, with images/ and masks/ inside", "my_data"),
    "format": ("onnx, torchscript or bioimageio", "onnx"),
}


def command_name() -> str:
    """The console script as typed (``unet-eval``), or ``unet-<job>`` under ``python -m`` and torchrun."""
    name = Path(sys.argv[0]).name
    if name.startswith("unet-"):
        return name
    return f"unet-{HydraConfig.get().job.name}" if HydraConfig.initialized() else "unet-train"


def exit_if_version_asked(argv: Sequence[str] | None = None) -> None:
    """``--version`` (or ``-V``) prints the package's version and exits, instead of Hydra's own version."""
    args = sys.argv[1:] if argv is None else argv
    if "--version" in args or "-V" in args:
        from unet_train import __version__

        print(f"{command_name()} (unet-train) {__version__}")
        raise SystemExit(0)


def missing_usage(keys: list[str], cfg: DictConfig | None = None) -> str:
    """Two lines: what the command needs and an example command with this call's overrides plus the keys."""
    prog = command_name()
    needs = " and ".join(f"{key} ({MANDATORY[key][0]})" if key in MANDATORY else key for key in keys)
    examples = [f"{key}={example_value(key, cfg)}" for key in keys]
    typed = user_overrides() if HydraConfig.initialized() else []
    typed = [o for o in typed if o.partition("=")[0].lstrip("+~") not in keys]
    return f"{prog} needs {needs}.\nExample: {' '.join([prog, *typed, *examples])}"


def example_value(key: str, cfg: DictConfig | None) -> str:
    """The table's example; for ``ckpt``, the newest ``best.pt`` under ./outputs when there is one."""
    if key == "ckpt":
        root = Path(str(OmegaConf.select(cfg, "paths.output_dir", default=".") if cfg is not None else "."))
        found = sorted(root.glob("outputs/*/*/checkpoints/best.pt"))
        if found:
            return str(found[-1])
    return MANDATORY[key][1] if key in MANDATORY else "..."


def missing_keys(cfg: DictConfig) -> list[str]:
    """The keys of ``cfg`` still at ``???``, in the order of :data:`MANDATORY` (then by name).

    Read from the unresolved tree: an interpolation is not evaluated, so none can fail here.
    """

    def walk(node: Any, prefix: str) -> list[str]:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        found = []
        for key, value in items:
            found += [prefix + str(key)] if value == "???" else walk(value, f"{prefix}{key}.")
        return found

    order = list(MANDATORY)
    tree = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(tree, dict)
    tree.pop("hydra", None)  # a config composed with return_hydra_config: Hydra's own fields are not the user's
    found = walk(tree, "")
    return sorted(found, key=lambda key: (order.index(key) if key in order else len(order), key))


def exit_with_usage(keys: list[str], cfg: DictConfig | None) -> NoReturn:
    sys.stderr.write(missing_usage(keys, cfg) + "\n")
    discard_unused_run_folder(cfg)
    sys.exit(2)


# Exit status of a command stopped by Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
CTRL_C_EXIT = 130


# What a job leaves in its run folder before it has done anything: Hydra's record, the log, the config.
RECORD = (".hydra", "resolved_config.yaml", ".lock")  # the lock file stays behind its (released) lock


def discard_unused_run_folder(cfg: DictConfig | None) -> None:
    """Remove this job's run folder when it holds nothing but :data:`RECORD`, the job's log and empty
    TensorBoard files.

    A call that stops before any work (a usage message, a refused value) then leaves no folder to
    sift through; a folder with anything else (a checkpoint, TensorBoard events, a resumed run's
    files) is kept. Empty parents (``outputs/<date>``) go too, up to ``paths.output_dir``. Sweeps keep
    their job folders (the sweep's summary lists them).
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return
    folder = run_dir().resolve()
    keep = {*RECORD, f"{HydraConfig.get().job.name}.log"}

    def holds_work(path: Path) -> bool:
        top = path.relative_to(folder).parts[0]
        # a TensorBoard file of only its version header (88 bytes): the writer was opened, nothing logged
        empty_events = top == "tensorboard" and path.name.startswith("events.") and path.stat().st_size <= 128
        return top not in keep and not empty_events

    if not folder.is_dir() or any(holds_work(p) for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()):
        return
    shutil.rmtree(folder)
    base = Path(str(OmegaConf.select(cfg, "paths.output_dir", default=".") if cfg is not None else ".")).resolve()
    for parent in folder.parents:
        if parent == base or base not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


def exit_on_user_error(func: F) -> F:
    """Turn a :class:`UserError` into one logged line and exit status 2, instead of a traceback.

    A config (the first argument) with mandatory keys left at ``???`` stops before any work, with
    :func:`missing_usage` on stderr and exit status 2. A stop the user asked for (Ctrl-C, SIGTERM) is
    logged in one line at INFO, without a traceback: Ctrl-C exits with status 130, a training run stopped
    by a signal with 128 + the signal (after saving ``last.pt``).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cfg = args[0] if args and isinstance(args[0], DictConfig) else None
        if cfg is not None and (missing := missing_keys(cfg)):
            exit_with_usage(missing, cfg)
        try:
            return func(*args, **kwargs)
        except MissingMandatoryValue as exc:  # a ``???`` read later, in a config built at run time
            exit_with_usage([str(getattr(exc, "full_key", None) or exc)], cfg)
        except UserError as exc:
            log.error("%s", user_message(exc))  # one line, from a loader worker too
            discard_unused_run_folder(cfg)
            sys.exit(2)
        except RunInterrupted as exc:  # a stop signal: last.pt is saved, the message says how to resume
            log.info("%s", exc)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            log.info("Interrupted by Ctrl-C: %s stopped.", command_name())
            discard_unused_run_folder(cfg)  # stopped before any work: no folder holding only a log
            sys.exit(CTRL_C_EXIT)

    return wrapper  # type: ignore[return-value]


def console_script(main: F) -> F:
    """A console script's entry point: Ctrl-C before the job's own handling (imports, Hydra's start-up) ends
    in one line with status 130 instead of a ``KeyboardInterrupt`` traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the one set while importing (__init__)
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            sys.stderr.write(f"Interrupted by Ctrl-C: {command_name()} stopped.\n")
            sys.exit(CTRL_C_EXIT)

    return wrapper  # type: ignore[return-value]


def run_dir() -> Path:
    """The Hydra run folder of this job (``outputs/<date>/<time>`` or ``multirun/.../<n>``)."""
    return Path(HydraConfig.get().runtime.output_dir)


def user_overrides() -> list[str]:
    """The command-line overrides of this job, as typed."""
    return list(HydraConfig.get().overrides.task)
