"""What the console scripts share: logging of user errors, usage for missing keys, the run folder, resume overrides."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from unet_train.added_keys import check_added_keys
from unet_train.config import PathsConfig, TrainerConfig, config_dir
from unet_train.errors import ConfigError, RunInterrupted, UserError

log = logging.getLogger("unet_train")
F = TypeVar("F", bound=Callable[..., Any])

# Config groups whose choice a checkpoint fixes: changing them on resume or eval would not fit the weights.
FIXED_GROUPS = ("model",)

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
            log.error("%s", exc)
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


# Overrides meant for a checkpoint's stored config travel here rather than through Hydra, which would
# check them against the default config (data=isbi has no data.num_val; unet-eval's data is null) and,
# on a resume, record them in the job's .hydra/overrides.yaml. An environment variable reaches the
# job in any launcher's process.
RESUME_ENV = "UNET_TRAIN_RESUME_OVERRIDES"
EVAL_DATA_ENV = "UNET_TRAIN_EVAL_DATA_OVERRIDES"


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))  # ``~key`` deletes without a value


def _key(arg: str) -> str:
    return arg.lstrip("+~").partition("=")[0]


def is_resume(args: Sequence[str]) -> bool:
    """Whether the command line resumes a checkpoint (``ckpt=PATH``)."""
    return any(arg.startswith("ckpt=") and arg[5:] not in ("", "null") for arg in args if _is_override(arg))


def _hold(argv: list[str], env: str, held: Callable[[str], bool] | None) -> list[str]:
    """Move the overrides of ``argv`` that ``held`` selects into ``env`` (JSON); None clears ``env``."""
    if held is None:
        os.environ.pop(env, None)
        return argv
    args = argv[1:]
    taken = [arg for arg in args if _is_override(arg) and held(arg)]
    os.environ[env] = json.dumps(taken)
    return [argv[0], *(arg for arg in args if arg not in taken)]


SWEEP_HINT = 'pip install "unet-train[sweep]"'
# Group choices that need a Hydra plugin of the sweep extra, and the plugin's module.
SWEEP_PLUGINS = {
    "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/sweeper=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=submitit_local": "hydra_plugins.hydra_submitit_launcher",
}


def require_sweep_extra(args: Sequence[str]) -> None:
    """Exit 2 with one line naming the sweep extra when a choice in ``args`` needs a plugin not installed.

    Without it, Hydra fails to compose with a list of the options it did find (``Could not find
    'hydra/sweeper/optuna'``), which does not say what to install.
    """
    for arg in args:
        module = SWEEP_PLUGINS.get(arg.lstrip("+"))
        if module is None:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            sys.stderr.write(f"{arg} needs the sweep extra, which is not installed: {SWEEP_HINT}\n")
            sys.exit(2)


def hold_resume_overrides(argv: list[str]) -> list[str]:
    """On a resume, take the overrides for the checkpoint's config out of ``argv``; returns the new argv.

    ``ckpt=`` and ``hydra.*`` overrides stay with Hydra (they choose the run folder); the others go to
    :data:`RESUME_ENV` for :func:`resume_overrides`. A multirun (``-m``) keeps its overrides, which Hydra
    needs to sweep. Without a resume, a value left by an earlier call in this process is cleared.
    """
    args = argv[1:]
    resume = is_resume(args) and not any(arg in ("-m", "--multirun") for arg in args)
    # trust_config decides whether the checkpoint may be opened; max_pixels is this machine's, not the run's
    keep = ("ckpt", "hydra", "trust_config", "max_pixels")
    return _hold(argv, RESUME_ENV, (lambda arg: _key(arg).split(".")[0].split("/")[0] not in keep) if resume else None)


def hold_eval_data_overrides(argv: list[str]) -> list[str]:
    """For ``unet-eval`` on the checkpoint's own data (no ``data=NAME``), take the ``data.*`` overrides out.

    They apply to the stored data config (:func:`eval_data_overrides`): ``data.root=DIR`` and
    ``+data.root=DIR`` both work, and a key the stored config lacks is refused unless added with ``+``.
    """
    chosen = any(_is_override(arg) and _key(arg) == "data" for arg in argv[1:])
    return _hold(argv, EVAL_DATA_ENV, None if chosen else (lambda arg: _key(arg).startswith("data.")))


def resume_overrides() -> list[str]:
    """The overrides a resume applies to the checkpoint's config (held by :func:`hold_resume_overrides`)."""
    held = os.environ.get(RESUME_ENV)
    return list(json.loads(held)) if held is not None else user_overrides()


def eval_data_overrides() -> list[str] | None:
    """The ``data.*`` overrides held by :func:`hold_eval_data_overrides`, or None when none were held."""
    held = os.environ.get(EVAL_DATA_ENV)
    return list(json.loads(held)) if held is not None else None


def _is_group(key: str) -> bool:
    return "." not in key and (config_dir() / key).is_dir()


def run_choices(ckpt: str | Path) -> dict[str, str | None] | None:
    """The group choices of the run that wrote ``ckpt`` (``model: vanilla``), from its ``.hydra/hydra.yaml``.

    None when the checkpoint is not inside its run folder (``<run>/checkpoints/``) or the record is unreadable.
    """
    record = Path(ckpt).expanduser().resolve().parent.parent / ".hydra" / "hydra.yaml"
    try:
        choices = yaml.safe_load(record.read_text())["hydra"]["runtime"]["choices"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    if not isinstance(choices, dict):
        return None
    return {str(group): None if option is None else str(option) for group, option in choices.items()}


def _refuse_choice(line: str, key: str, choices: dict[str, str | None] | None) -> NoReturn:
    """Refuse another option of group ``key`` on a resume, naming the run's own when it is recorded."""
    used = ""
    if choices is not None:
        used = f"this run used {key}={choices[key]}" if choices.get(key) else f"this run used no {key} option"
    if key in FIXED_GROUPS:
        note = f" ({used})" if used else ""
        raise ConfigError(f"{line}: the checkpoint fixes the model{note}; start a new run to train another {key}.")
    if used:
        raise ConfigError(
            f"{line}: {used}, and a resume cannot choose another {key} option; drop {key}=..., or override its keys."
        )
    raise ConfigError(f"{line}: choosing another {key} option is not supported on a resume; override its keys.")


def apply_overrides(
    base: DictConfig,
    overrides: list[str],
    skip: tuple[str, ...] = (),
    choices: dict[str, str | None] | None = None,
) -> DictConfig:
    """Apply Hydra-style overrides from the command line onto a checkpoint's stored config.

    They are checked against that config, as Hydra checks a new run's against the composed one:
    ``key=value`` changes a key the checkpoint's config has (a misspelt key is refused),
    ``+key=value`` adds one, ``++key=value`` sets one either way, ``~key`` deletes one; values
    parse as Hydra parses them, and ``trainer.*`` / ``paths.*`` values are checked against their
    schemas. A group choice equal to the run's own (``choices``, from :func:`run_choices`) is accepted, as
    when the run's own command is repeated with ``ckpt=`` added; another option of a config group
    (``model=attention``, ``data=folder``) is refused; group choices named in ``skip`` are left to the caller.
    Keys added under a group are checked by :func:`unet_train.added_keys.check_added_keys`.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=False))
    assert isinstance(cfg, DictConfig)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(f"Could not parse the overrides {' '.join(overrides)}: {exc}") from None
    missing = object()
    for override in parsed:
        key, line = override.key_or_group, override.input_line or override.key_or_group
        if key in skip or key == "ckpt" or key.split(".")[0] == "hydra" or key.startswith("hydra/"):
            continue
        if override.is_sweep_override():
            raise ConfigError(f"{line}: a sweep over values cannot apply to one checkpoint; give one value.")
        if key in FIXED_GROUPS or _is_group(key) or override.package:
            if choices is not None and not override.package and key in choices and choices[key] == override.value():
                continue
            _refuse_choice(line, key, choices)
        current = OmegaConf.select(cfg, key, default=missing, throw_on_missing=False)
        if override.is_delete():
            if current is missing:
                raise ConfigError(f"{line}: the checkpoint's config has no {key} to delete.")
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            with open_dict(node):
                del node[leaf]
            continue
        if current is missing and not (override.is_add() or override.is_force_add()):
            raise ConfigError(
                f"{line}: the checkpoint's config has no key {key}; check the spelling, or write +{line} to add it."
            )
        value = override.value()
        _check_schema(key, value, line)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    check_added_keys(cfg, [line for line in overrides if _key(line).partition(".")[0] not in skip])
    return cfg


def _check_schema(key: str, value: Any, line: str) -> None:
    """Check a ``trainer.*`` or ``paths.*`` value against its dataclass schema, as composing would."""
    group, _, leaf = key.partition(".")
    schema = {"trainer": TrainerConfig, "paths": PathsConfig}.get(group)
    if schema is None or not leaf:
        return
    try:
        OmegaConf.merge(OmegaConf.structured(schema), {leaf: value})
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{line}: {str(exc).splitlines()[0]}") from None
